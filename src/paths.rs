//! File paths as stored on findings and fixes: relative to the analysed
//! source root, with `/` separators.

/// Normalises a client-given path: `\` becomes `/`, and leading `./` and
/// repeated separators are dropped, so `.\lib\a.py` and `lib//a.py` are
/// both stored as `lib/a.py`.
pub fn normalize(path: &str) -> String {
    let unified = path.replace('\\', "/");
    let absolute = unified.starts_with('/');
    let parts: Vec<&str> = unified
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Decodes `%XX` escapes of a URI path; an invalid escape is kept as it is.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let escape = std::str::from_utf8(&bytes[index + 1..index + 3])
                .ok()
                .filter(|hex| hex.bytes().all(|byte| byte.is_ascii_hexdigit()));
            if let Some(byte) = escape.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                decoded.push(byte);
                index += 3;
                continue;
            }
        }
        decoded.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Escapes a path for use in a URI: every byte other than an unreserved
/// character (RFC 3986) or `/` becomes `%XX`, so `percent_decode` gives the
/// path back.
pub fn percent_encode(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Turns a `file://` URI or a path into a local path: strips the scheme and
/// host, then decodes escapes. Other URIs are returned unchanged.
pub fn uri_to_path(uri: &str) -> String {
    let Some(rest) = uri.strip_prefix("file://") else {
        if uri.contains("://") {
            return uri.to_string();
        }
        return percent_decode(uri.strip_prefix("file:").unwrap_or(uri));
    };
    // `file:///a` has an empty host; `file://host/a` names one, which is dropped.
    let path = match rest.find('/') {
        Some(slash) => &rest[slash..],
        None => "",
    };
    percent_decode(path)
}

/// Makes `uri` relative to `root` (a path or `file://` URI) when it lies
/// below it; otherwise returns the normalised path unchanged.
pub fn relative_to(uri: &str, root: Option<&str>) -> String {
    let path = normalize(&uri_to_path(uri));
    let Some(root) = root else {
        return path;
    };
    let root = normalize(&uri_to_path(root));
    if root.is_empty() {
        return path;
    }
    match path.strip_prefix(&root) {
        Some("") => String::new(),
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/').to_string(),
        _ if root == "/" => path.trim_start_matches('/').to_string(),
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalize(".\\lib\\a.py"), "lib/a.py");
        assert_eq!(normalize("lib//x/./a.py"), "lib/x/a.py");
        assert_eq!(normalize("/home/dev/a.py"), "/home/dev/a.py");
    }

    #[test]
    fn file_uris_become_relative_paths() {
        let uri = "file:///home/dev/crewAI/lib/crewai/a%20b.py";
        assert_eq!(
            relative_to(uri, Some("/home/dev/crewAI")),
            "lib/crewai/a b.py"
        );
        assert_eq!(
            relative_to(uri, Some("/home/dev/crewAI/")),
            "lib/crewai/a b.py"
        );
        assert_eq!(
            relative_to(uri, Some("file:///home/dev/crewAI")),
            "lib/crewai/a b.py"
        );
        assert_eq!(relative_to(uri, None), "/home/dev/crewAI/lib/crewai/a b.py");
        // A root that only shares a prefix of a name is not a parent.
        assert_eq!(
            relative_to(uri, Some("/home/dev/crew")),
            "/home/dev/crewAI/lib/crewai/a b.py"
        );
        assert_eq!(relative_to("src/main.rs", Some("/repo")), "src/main.rs");
        assert_eq!(relative_to("file://host/share/a.c", Some("/share")), "a.c");
    }

    #[test]
    fn encoded_paths_decode_to_themselves() {
        let path = "lib/my tools/100%/ä:b#c.py";
        assert_eq!(percent_encode("lib/a_b-c.py"), "lib/a_b-c.py");
        assert_eq!(percent_encode("my tools/a.py"), "my%20tools/a.py");
        assert_eq!(percent_decode(&percent_encode(path)), path);
        assert_eq!(relative_to(&percent_encode(path), None), path);
    }

    #[test]
    fn invalid_escapes_are_kept() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz%41"), "a%zzA");
    }
}
