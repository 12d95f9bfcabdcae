//! Who may call which `DepartmentGateway` method (docs/security.md): department systems with the
//! gateway's own hashed API tokens, checked by the gateway itself (`credentials.rs`), never a
//! person's bearer token; the department comes from that credential.

use whistle_platform::auth::Access;

/// The method table.
pub fn access(method: &str) -> Option<Access> {
    match method {
        "Subscribe" | "Acknowledge" | "CheckIn" | "ReportProgress" | "Resolve" | "Return"
        | "RequestExtension" | "ListAssignments" => Some(Access::OwnCredential),
        _ => None,
    }
}
