//! AuditService: listing audit events and verifying their hash chain.

use tonic::{Request, Response, Status};

use super::paging::{DEFAULT_PAGE_SIZE, list_page};
use super::validate::{self, MAX_NAME_BYTES};
use super::{convert, invalid_argument, to_status};
use crate::pb;
use crate::pb::audit_service_server::AuditService;
use crate::storage::Storage;
use crate::storage::audit::{self, AuditFilter};
use crate::storage::models::AuditEventRow;

pub struct AuditApi {
    storage: Storage,
}

impl AuditApi {
    pub fn new(storage: Storage) -> Self {
        AuditApi { storage }
    }
}

fn event(row: AuditEventRow) -> pb::AuditEvent {
    pb::AuditEvent {
        id: row.id,
        occurred_at: Some(convert::micros_to_timestamp(row.occurred_at)),
        actor: row.actor,
        action: row.action,
        record_type: row.record_type,
        record_id: row.record_id,
        before: row.before.unwrap_or_default(),
        after: row.after.unwrap_or_default(),
        previous_hash: row.previous_hash,
        hash: row.hash,
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let request = request.into_inner();
        let record_id = validate::optional_id("record_id", request.record_id)?;
        if record_id.is_some() && request.record_type.is_empty() {
            return Err(invalid_argument(
                "record_type",
                "is required with record_id",
            ));
        }
        let filter = AuditFilter {
            record_type: validate::filter_text(
                "record_type",
                &request.record_type,
                MAX_NAME_BYTES,
            )?,
            record_id,
            actor: validate::filter_text("actor", &request.actor, MAX_NAME_BYTES)?,
            action: validate::filter_text("action", &request.action, MAX_NAME_BYTES)?,
            occurred_after: validate::timestamp("occurred_after", request.occurred_after.as_ref())?,
            occurred_before: validate::timestamp(
                "occurred_before",
                request.occurred_before.as_ref(),
            )?,
        };
        let listed = list_page(
            &self.storage,
            filter,
            request.page_size,
            &request.page_token,
            DEFAULT_PAGE_SIZE,
            audit::list,
        )
        .await?;

        Ok(Response::new(pb::ListAuditEventsResponse {
            next_page_token: listed.next_page_token,
            total_size: listed.total_size,
            events: listed.items.into_iter().map(event).collect(),
        }))
    }

    async fn verify_audit_trail(
        &self,
        _request: Request<pb::VerifyAuditTrailRequest>,
    ) -> Result<Response<pb::VerifyAuditTrailResponse>, Status> {
        let verification = self.storage.run(audit::verify).await.map_err(to_status)?;
        let (first_broken_event_id, reason) = verification.broken.clone().unwrap_or_default();
        if first_broken_event_id != 0 {
            tracing::error!(audit_event.id = first_broken_event_id, reason = %reason, "audit trail is broken");
        }
        Ok(Response::new(pb::VerifyAuditTrailResponse {
            intact: verification.broken.is_none(),
            checked_count: verification.checked,
            first_broken_event_id,
            reason,
        }))
    }
}
