//! Department credentials: bearer tokens, stored only as SHA-256 digests, with an optional expiry
//! and a revocation mark, checked on every call; `whistle credentials` issues, rotates, revokes
//! and lists them; for local runs, a credentials file through which tokens are handed out.

use crate::domain::{self, BearerError};
use crate::error::GatewayError;
use crate::storage::{self, credential, department};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait, TransactionTrait};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use whistle_platform::clock::{Clock, SystemClock, to_millis};

/// How long a token's department is remembered: a credential revoked or removed in the database
/// stops working within this time (an expiry is exact: nothing is remembered past it).
pub const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(5);
/// Tokens remembered at most; beyond it the expired ones are forgotten, or all of them.
const CREDENTIAL_CACHE_ENTRIES: usize = 10_000;

/// The departments of recently authenticated tokens (by digest), so a burst of calls with one token
/// costs one database lookup instead of one each. Unknown tokens are never remembered.
#[derive(Debug, Clone, Default)]
pub struct CredentialCache {
    entries: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl CredentialCache {
    fn department_of(&self, token_sha256: &str, now: Instant) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(token_sha256)
            .filter(|(_, expires_at)| now < *expires_at)
            .map(|(department_code, _)| department_code.clone())
    }

    /// Remembers for [`CREDENTIAL_CACHE_TTL`], or less when the token expires sooner.
    fn remember_until_expiry(
        &self,
        token_sha256: String,
        department_code: String,
        now: Instant,
        remaining: Option<Duration>,
    ) {
        let lifetime = remaining.map_or(CREDENTIAL_CACHE_TTL, |remaining| {
            remaining.min(CREDENTIAL_CACHE_TTL)
        });
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CREDENTIAL_CACHE_ENTRIES {
            entries.retain(|_, (_, expires_at)| now < *expires_at);
            if entries.len() >= CREDENTIAL_CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(token_sha256, (department_code, now + lifetime));
    }

    #[cfg(test)]
    fn remember(&self, token_sha256: String, department_code: String, now: Instant) {
        self.remember_until_expiry(token_sha256, department_code, now, None);
    }
}

/// The department that sent a call, taken from its `authorization: Bearer <token>` metadata.
pub async fn authenticate(
    db: &DatabaseConnection,
    cache: &CredentialCache,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<String, GatewayError> {
    let authorization = match metadata.get("authorization") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| GatewayError::Unauthenticated(BearerError::Malformed.to_string()))?,
        ),
    };
    let token = domain::bearer_token(authorization)
        .map_err(|error| GatewayError::Unauthenticated(error.to_string()))?;
    let digest = domain::token_digest(token);
    if let Some(department_code) = cache.department_of(&digest, Instant::now()) {
        return Ok(department_code);
    }
    let credential = storage::credential_of_token(db, &digest)
        .await?
        .ok_or_else(|| {
            GatewayError::Unauthenticated(
                "unknown token: ask the operator of the gateway for your department's credentials"
                    .into(),
            )
        })?;
    let now_ms = to_millis(SystemClock.now());
    let remaining = usable(&credential, now_ms).map_err(GatewayError::Unauthenticated)?;
    cache.remember_until_expiry(
        digest,
        credential.department_code.clone(),
        Instant::now(),
        remaining,
    );
    Ok(credential.department_code)
}

/// How long a stored credential stays usable from `now_ms` (`None`: no expiry), or why it is not.
pub fn usable(credential: &credential::Model, now_ms: i64) -> Result<Option<Duration>, String> {
    if let Some(revoked_at_ms) = credential.revoked_at_ms {
        return Err(format!(
            "token revoked at {}: ask the operator of the gateway for a new one",
            rfc3339(revoked_at_ms)
        ));
    }
    match credential.expires_at_ms {
        Some(expires_at_ms) if expires_at_ms <= now_ms => Err(format!(
            "token expired at {}: ask the operator of the gateway for a new one",
            rfc3339(expires_at_ms)
        )),
        Some(expires_at_ms) => Ok(Some(Duration::from_millis(
            u64::try_from(expires_at_ms - now_ms).unwrap_or(0),
        ))),
        None => Ok(None),
    }
}

fn rfc3339(at_ms: i64) -> String {
    // whole seconds are enough to tell an operator when
    let at = whistle_platform::clock::from_millis(at_ms - at_ms.rem_euclid(1000));
    at.to_rfc3339().replace("+00:00", "Z")
}

/// A credential as `whistle credentials list` shows it (never the token, which is not stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSummary {
    pub department_code: String,
    /// The first 12 hex characters of the token's SHA-256, enough to tell tokens apart.
    pub digest_prefix: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// Issues a new token to a department of the registry, stored as its digest; returns the token,
/// which is shown once and never stored.
pub async fn issue_token(
    db: &DatabaseConnection,
    department_code: &str,
    expires_at_ms: Option<i64>,
    now_ms: i64,
) -> anyhow::Result<String> {
    if department::Entity::find_by_id(department_code)
        .one(db)
        .await?
        .is_none()
    {
        anyhow::bail!("department {department_code} is not in the gateway's registry");
    }
    let token = new_token();
    credential::Entity::insert(credential::ActiveModel {
        token_sha256: Set(domain::token_digest(&token)),
        department_code: Set(department_code.to_string()),
        created_at_ms: Set(now_ms),
        expires_at_ms: Set(expires_at_ms),
        revoked_at_ms: Set(None),
    })
    .exec_without_returning(db)
    .await?;
    Ok(token)
}

/// Revokes every live token of a department (or only those whose digest starts with
/// `digest_prefix`); returns how many. Revoked tokens are refused within
/// [`CREDENTIAL_CACHE_TTL`].
pub async fn revoke(
    db: &DatabaseConnection,
    department_code: &str,
    digest_prefix: Option<&str>,
    now_ms: i64,
) -> anyhow::Result<u64> {
    use sea_orm::{ColumnTrait, QueryFilter};
    let mut update = credential::Entity::update_many()
        .col_expr(credential::Column::RevokedAtMs, now_ms.into())
        .filter(credential::Column::DepartmentCode.eq(department_code))
        .filter(credential::Column::RevokedAtMs.is_null());
    if let Some(prefix) = digest_prefix {
        update = update.filter(credential::Column::TokenSha256.starts_with(prefix));
    }
    Ok(update.exec(db).await?.rows_affected)
}

/// Sets the expiry of a department's live tokens that expire later than `expires_at_ms` (or never)
/// to `expires_at_ms`: after a rotation the old tokens keep working for a grace period only.
pub async fn expire_live_tokens(
    db: &DatabaseConnection,
    department_code: &str,
    expires_at_ms: i64,
    except_digest: &str,
) -> anyhow::Result<u64> {
    use sea_orm::sea_query::Condition;
    use sea_orm::{ColumnTrait, QueryFilter};
    Ok(credential::Entity::update_many()
        .col_expr(credential::Column::ExpiresAtMs, expires_at_ms.into())
        .filter(credential::Column::DepartmentCode.eq(department_code))
        .filter(credential::Column::RevokedAtMs.is_null())
        .filter(credential::Column::TokenSha256.ne(except_digest))
        .filter(
            Condition::any()
                .add(credential::Column::ExpiresAtMs.is_null())
                .add(credential::Column::ExpiresAtMs.gt(expires_at_ms)),
        )
        .exec(db)
        .await?
        .rows_affected)
}

/// Every credential, by department then creation.
pub async fn list(db: &DatabaseConnection) -> anyhow::Result<Vec<CredentialSummary>> {
    use sea_orm::QueryOrder;
    Ok(credential::Entity::find()
        .order_by_asc(credential::Column::DepartmentCode)
        .order_by_asc(credential::Column::CreatedAtMs)
        .all(db)
        .await?
        .into_iter()
        .map(|credential| CredentialSummary {
            digest_prefix: credential.token_sha256.chars().take(12).collect(),
            department_code: credential.department_code,
            created_at_ms: credential.created_at_ms,
            expires_at_ms: credential.expires_at_ms,
            revoked_at_ms: credential.revoked_at_ms,
        })
        .collect())
}

/// A fresh token: 32 random bytes (from the OS generator, via two UUIDv4), hex-encoded.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    hex::encode(bytes)
}

/// What [`issue_missing_credentials`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IssuedCredentials {
    /// Departments that got a new token, written to the file.
    pub issued: Vec<String>,
    /// Departments whose token was in the file but not in the database (a file kept across a
    /// fresh database, or a crash between writing the file and the database); now registered.
    pub registered_from_file: Vec<String>,
}

/// Makes every department in the registry able to log in through the credentials file at `path`
/// (`{"<department code>": "<token>"}`): tokens already in the file are registered when the
/// database lacks them, and each department still without any credential gets a new token,
/// merged into the file (created when missing, other entries kept, written atomically, mode 0600).
/// Running it again with the same database and file changes nothing.
pub async fn issue_missing_credentials(
    db: &DatabaseConnection,
    path: &Path,
) -> anyhow::Result<IssuedCredentials> {
    let now_ms = to_millis(SystemClock.now());
    let mut file_tokens = read_credentials_file(path).await?;
    let departments: Vec<String> = department::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|department| department.code)
        .collect();
    let stored = credential::Entity::find().all(db).await?;
    let stored_digests: HashSet<&str> = stored
        .iter()
        .map(|credential| credential.token_sha256.as_str())
        .collect();
    let mut departments_with_credentials: HashSet<&str> = stored
        .iter()
        .map(|credential| credential.department_code.as_str())
        .collect();

    let mut to_register = Vec::new();
    let mut outcome = IssuedCredentials::default();
    for code in &departments {
        let Some(token) = file_tokens.get(code) else {
            continue;
        };
        let digest = domain::token_digest(token);
        if !stored_digests.contains(digest.as_str()) {
            to_register.push((code.clone(), digest));
            outcome.registered_from_file.push(code.clone());
        }
        departments_with_credentials.insert(code.as_str());
    }
    for code in &departments {
        if departments_with_credentials.contains(code.as_str()) {
            continue;
        }
        let token = new_token();
        to_register.push((code.clone(), domain::token_digest(&token)));
        file_tokens.insert(code.clone(), token);
        outcome.issued.push(code.clone());
    }
    for code in file_tokens.keys() {
        if !departments.contains(code) {
            tracing::warn!(department = %code, file = %path.display(), "credentials file names a department the registry does not know; its token is ignored");
        }
    }

    // the file first: if the process dies before the database commit, the next start registers
    // the tokens from the file instead of losing them
    if !outcome.issued.is_empty() {
        write_credentials_file(path, &file_tokens).await?;
    }
    if !to_register.is_empty() {
        let transaction = db.begin().await?;
        for (department_code, token_sha256) in to_register {
            credential::Entity::insert(credential::ActiveModel {
                token_sha256: Set(token_sha256),
                department_code: Set(department_code),
                created_at_ms: Set(now_ms),
                expires_at_ms: Set(None),
                revoked_at_ms: Set(None),
            })
            .on_conflict(
                OnConflict::column(credential::Column::TokenSha256)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&transaction)
            .await?;
        }
        transaction.commit().await?;
    }
    tracing::info!(
        file = %path.display(),
        issued = outcome.issued.len(),
        registered_from_file = outcome.registered_from_file.len(),
        "department credentials ready"
    );
    Ok(outcome)
}

async fn read_credentials_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || check_credentials_file(&path)).await?
}

/// Reads and checks a credentials file (a missing or empty file is an empty set).
pub fn check_credentials_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(BTreeMap::new());
        }
        Err(error) => anyhow::bail!("cannot read credentials file {}: {error}", path.display()),
    };
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let tokens: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|error| {
        anyhow::anyhow!(
            "credentials file {} must be a JSON object of department code to token: {error}",
            path.display()
        )
    })?;
    for (code, token) in &tokens {
        if !domain::is_token(token) {
            anyhow::bail!(
                "credentials file {}: the token of {code} must be 1 to {} visible ASCII characters",
                path.display(),
                domain::MAX_TOKEN_LENGTH
            );
        }
    }
    Ok(tokens)
}

async fn write_credentials_file(
    path: &Path,
    tokens: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tokio::fs::create_dir_all(&folder)
        .await
        .map_err(|error| anyhow::anyhow!("cannot create folder {}: {error}", folder.display()))?;
    let mut text = serde_json::to_string_pretty(tokens)?;
    text.push('\n');
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "credentials.json".into());
    let temporary = folder.join(format!(".{file_name}.{}.tmp", uuid::Uuid::now_v7()));
    let written = write_private_file(&temporary, text.as_bytes()).await;
    let renamed = match written {
        Ok(()) => tokio::fs::rename(&temporary, path).await,
        Err(error) => Err(error),
    };
    if let Err(error) = renamed {
        let _ = tokio::fs::remove_file(&temporary).await;
        anyhow::bail!("cannot write credentials file {}: {error}", path.display());
    }
    Ok(())
}

/// Creates `path` readable by its owner only and writes `bytes` to disk.
async fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_departments_expire() {
        let cache = CredentialCache::default();
        let now = Instant::now();
        assert_eq!(cache.department_of("digest", now), None);
        cache.remember("digest".into(), "zw-sanitation".into(), now);
        assert_eq!(
            cache.department_of("digest", now + Duration::from_secs(1)),
            Some("zw-sanitation".into())
        );
        assert_eq!(
            cache.department_of("digest", now + CREDENTIAL_CACHE_TTL),
            None
        );
    }

    #[test]
    fn a_token_is_not_remembered_past_its_expiry() {
        let cache = CredentialCache::default();
        let now = Instant::now();
        cache.remember_until_expiry(
            "digest".into(),
            "zw-sanitation".into(),
            now,
            Some(Duration::from_secs(1)),
        );
        assert_eq!(
            cache.department_of("digest", now + Duration::from_millis(999)),
            Some("zw-sanitation".into())
        );
        assert_eq!(
            cache.department_of("digest", now + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn expired_and_revoked_credentials_say_which() {
        let credential = |expires_at_ms, revoked_at_ms| credential::Model {
            token_sha256: "digest".into(),
            department_code: "zw-sanitation".into(),
            created_at_ms: 0,
            expires_at_ms,
            revoked_at_ms,
        };
        assert_eq!(usable(&credential(None, None), 5_000), Ok(None));
        assert_eq!(
            usable(&credential(Some(7_000), None), 5_000),
            Ok(Some(Duration::from_secs(2)))
        );
        let expired = usable(&credential(Some(5_000), None), 5_000).expect_err("expired");
        assert!(
            expired.starts_with("token expired at 1970-01-01T00:00:05Z"),
            "{expired}"
        );
        let revoked = usable(&credential(None, Some(4_000)), 5_000).expect_err("revoked");
        assert!(revoked.starts_with("token revoked at"), "{revoked}");
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = CredentialCache::default();
        let now = Instant::now();
        for index in 0..CREDENTIAL_CACHE_ENTRIES + 10 {
            cache.remember(format!("digest-{index}"), "zw-housing".into(), now);
        }
        let entries = cache.entries.lock().expect("lock").len();
        assert!(entries <= CREDENTIAL_CACHE_ENTRIES, "{entries}");
    }

    #[test]
    fn tokens_are_64_hex_characters_and_distinct() {
        let first = new_token();
        let second = new_token();
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(first, second);
        assert!(domain::is_token(&first));
    }
}
