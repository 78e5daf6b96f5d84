//! Log level names of common logging systems, mapped to the severity
//! numbers of the OpenTelemetry log data model (1 to 24; TRACE 1, DEBUG 5,
//! INFO 9, WARN 13, ERROR 17, FATAL 21).

/// Returns the severity number of a level name, ignoring case and
/// surrounding white space, or `None` for a name no known system writes.
///
/// Accepted: Python logging (NOTSET, DEBUG, INFO, WARNING, WARN, ERROR,
/// CRITICAL, FATAL), log4j and java.util.logging (TRACE, ALL, FINE, SEVERE, ...), syslog
/// (debug, info, notice, warning, err, error, crit, alert, emerg, panic),
/// OpenTelemetry (TRACE..TRACE4 up to FATAL..FATAL4), and the numbers 1 to 24.
pub fn severity_number(level: &str) -> Option<i32> {
    let name = level.trim().to_ascii_uppercase();
    if let Ok(number) = name.parse::<i32>() {
        return (1..=24).contains(&number).then_some(number);
    }
    let base = match name.as_str() {
        "TRACE" | "ALL" | "FINEST" | "NOTSET" => 1,
        "DEBUG" | "FINE" | "FINER" => 5,
        "INFO" | "INFORMATION" | "INFORMATIONAL" | "CONFIG" => 9,
        // syslog's notice is between info and warning.
        "NOTICE" => 10,
        "WARN" | "WARNING" => 13,
        "ERROR" | "ERR" | "SEVERE" => 17,
        "CRITICAL" | "CRIT" => 18,
        "ALERT" => 19,
        "FATAL" => 21,
        "EMERG" | "EMERGENCY" | "PANIC" => 22,
        _ => return otel_numbered(&name),
    };
    Some(base)
}

/// OpenTelemetry's short names with a step suffix, such as `INFO2` or `WARN4`.
fn otel_numbered(name: &str) -> Option<i32> {
    let split = name.find(|c: char| c.is_ascii_digit())?;
    let (prefix, step) = name.split_at(split);
    let step: i32 = step.parse().ok()?;
    if !(2..=4).contains(&step) {
        return None;
    }
    let base = match prefix {
        "TRACE" => 1,
        "DEBUG" => 5,
        "INFO" => 9,
        "WARN" => 13,
        "ERROR" => 17,
        "FATAL" => 21,
        _ => return None,
    };
    Some(base + step - 1)
}

#[cfg(test)]
mod tests {
    use super::severity_number;

    #[test]
    fn names_of_each_system_map_to_severity() {
        let cases = [
            ("DEBUG", 5),
            ("info", 9),
            ("Warning", 13),
            ("WARN", 13),
            ("error", 17),
            ("CRITICAL", 18),
            ("notice", 10),
            ("err", 17),
            ("crit", 18),
            ("alert", 19),
            ("emerg", 22),
            ("fatal", 21),
            ("trace", 1),
            ("INFO2", 10),
            ("WARN4", 16),
            ("FATAL4", 24),
            (" 17 ", 17),
        ];
        for (name, expected) in cases {
            assert_eq!(severity_number(name), Some(expected), "level {name:?}");
        }
    }

    #[test]
    fn unknown_names_are_rejected() {
        for name in ["", "verbose", "INFO5", "INFO1", "0", "25", "WARNX"] {
            assert_eq!(severity_number(name), None, "level {name:?}");
        }
    }
}
