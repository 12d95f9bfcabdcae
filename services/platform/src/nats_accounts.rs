//! NATS users and permissions generated from the registry: one user per service with only the
//! subjects it needs, read-only users per department and per supervision department. Users log in
//! with nkeys: the server configuration holds public keys only; each seed lives in its own private
//! file (mode 0600) that only its service or department reads.
//!
//! Used by `whistle nats-config` (production) and `whistle up` (its private server), and by tests.

use crate::nats::{CASES_STREAM, EVALUATION_STREAM, WHISTLES_STREAM};
use crate::provenance::{Producer, publish_subjects};
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The account every Whistle user belongs to.
pub const ACCOUNT: &str = "WHISTLE";

/// The part of the catalogue (registry) the NATS users come from.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Registry {
    #[serde(default)]
    pub cities: Vec<City>,
    #[serde(default)]
    pub districts: Vec<District>,
    #[serde(default)]
    pub streets: Vec<Street>,
    #[serde(default)]
    pub departments: Vec<Department>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct City {
    pub code: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct District {
    pub code: String,
    pub city_code: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Street {
    pub code: String,
    pub slug: String,
    pub district_code: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Department {
    pub code: String,
    #[serde(default)]
    pub region_code: String,
    /// A supervision department (督办): reads its region, not its own code.
    #[serde(default)]
    pub supervises: bool,
}

impl Registry {
    /// Reads the registry from a catalogue file's JSON (other sections are ignored).
    pub fn from_catalogue_json(text: &str) -> anyhow::Result<Self> {
        let registry: Registry = serde_json::from_str(text)
            .map_err(|error| anyhow::anyhow!("catalogue is not valid JSON: {error}"))?;
        for department in &registry.departments {
            if !crate::envelope::is_subject_token(&department.code) {
                anyhow::bail!(
                    "department code {:?} cannot be a NATS subject token",
                    department.code
                );
            }
        }
        Ok(registry)
    }

    /// The subject prefixes (`whistle`, `case`) of a region code: a city reads
    /// `<family>.v1.<city>.>`, a district `<family>.v1.*.<district>.>`, a street
    /// `<family>.v1.*.*.<street slug>.>`. `None` for a code the registry does not know.
    pub fn region_filter(&self, family: &str, region_code: &str) -> Option<String> {
        if self.cities.iter().any(|city| city.code == region_code) {
            return Some(format!("{family}.v1.{region_code}.>"));
        }
        if let Some(district) = self
            .districts
            .iter()
            .find(|district| district.code == region_code)
        {
            return Some(format!(
                "{family}.v1.{}.{region_code}.>",
                district.city_code
            ));
        }
        let street = self
            .streets
            .iter()
            .find(|street| street.code == region_code)?;
        let city = self
            .districts
            .iter()
            .find(|district| district.code == street.district_code)
            .map_or("*", |district| district.city_code.as_str());
        Some(format!(
            "{family}.v1.{city}.{}.{}.>",
            street.district_code, street.slug
        ))
    }
}

/// One NATS user and what it may publish and subscribe to (allow-lists; `None` is everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUser {
    pub name: String,
    /// One line saying who this is, written above the user in the configuration.
    pub about: String,
    pub publish: Option<Vec<String>>,
    pub subscribe: Option<Vec<String>>,
}

/// A durable pull consumer a service keeps: stream, name, filter subject.
type ConsumerOf = (&'static str, &'static str, &'static str);

/// The four services: NATS user, what they publish, their durable consumers.
const SERVICES: &[(&str, Option<Producer>, &[ConsumerOf])] = &[
    (
        "intake",
        Some(Producer::Intake),
        &[(CASES_STREAM, "intake-cases", "case.v1.>")],
    ),
    (
        "dispatch",
        Some(Producer::Dispatch),
        &[(CASES_STREAM, "dispatch-cases", "case.v1.>")],
    ),
    (
        "department-gateway",
        None,
        &[
            (WHISTLES_STREAM, "department-gateway", "whistle.v1.>"),
            (CASES_STREAM, "department-gateway-cases", "case.v1.>"),
        ],
    ),
    (
        "evaluation",
        Some(Producer::Evaluation),
        &[
            (CASES_STREAM, "evaluation-cases", "case.v1.>"),
            (WHISTLES_STREAM, "evaluation-whistles", "whistle.v1.>"),
            // its own ratings, call-backs and period decisions, applied as events
            (EVALUATION_STREAM, "evaluation-own", "evaluation.v1.>"),
        ],
    ),
];

/// The NATS user names of the four services.
pub fn service_names() -> Vec<&'static str> {
    SERVICES.iter().map(|(name, _, _)| *name).collect()
}

/// The durable consumers of a service (stream, name, filter), as its permissions allow them.
pub fn service_consumers(service: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    SERVICES
        .iter()
        .filter(|(name, _, _)| *name == service)
        .flat_map(|(_, _, consumers)| consumers.iter().copied())
        .collect()
}

/// The subjects that create, look up, fetch from and ack one durable pull consumer.
fn consumer_subjects(stream: &str, name: &str, filter: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.INFO.{stream}.{name}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"),
        format!("$JS.ACK.{stream}.{name}.>"),
        format!("$JS.ACK.*.*.{stream}.{name}.>"),
    ]
}

fn service_user(name: &str, producer: Option<Producer>, consumers: &[ConsumerOf]) -> NatsUser {
    let mut publish = Vec::new();
    for stream in [CASES_STREAM, WHISTLES_STREAM, EVALUATION_STREAM] {
        // whichever service starts first creates the streams
        publish.push(format!("$JS.API.STREAM.INFO.{stream}"));
        publish.push(format!("$JS.API.STREAM.CREATE.{stream}"));
    }
    if let Some(producer) = producer {
        publish.extend(publish_subjects(producer));
    }
    for (stream, consumer, filter) in consumers {
        publish.extend(consumer_subjects(stream, consumer, filter));
        // the same consumer given several subjects within `filter` (NATS 2.10 and later: the
        // subject names no filter then); the stream holds nothing outside `filter`, so this
        // reaches no further than the line above
        publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"));
    }
    if name == "dispatch" {
        // dispatch removes the consumer of case.reported only that older versions kept
        publish.push(format!("$JS.API.CONSUMER.DELETE.{CASES_STREAM}.dispatch"));
    }
    let publishes = producer.map_or("nothing".to_string(), |producer| {
        publish_subjects(producer).join(" ")
    });
    let consumes: Vec<&str> = consumers.iter().map(|(_, name, _)| *name).collect();
    NatsUser {
        name: name.to_string(),
        about: format!(
            "service {name}: publishes {publishes}; consumers {}",
            consumes.join(", ")
        ),
        publish: Some(publish),
        subscribe: Some(vec!["_INBOX.>".to_string()]),
    }
}

/// A read-only user: subscribes live to `filters`, and keeps one durable pull consumer named
/// after itself per stream, whose filter is one of them.
fn reader(name: &str, about: String, filters: &[(&str, String)]) -> NatsUser {
    let mut publish = vec!["$JS.API.STREAM.NAMES".to_string()];
    let mut subscribe = Vec::new();
    for (stream, filter) in filters {
        publish.extend(consumer_subjects(stream, name, filter));
        publish.push(format!("$JS.API.CONSUMER.DELETE.{stream}.{name}"));
        subscribe.push(filter.clone());
    }
    subscribe.push(format!("_INBOX.{name}.>"));
    NatsUser {
        name: name.to_string(),
        about,
        publish: Some(publish),
        subscribe: Some(subscribe),
    }
}

/// Every user of a registry: the four services, then one read-only user per department
/// (its own whistles) and per supervision department (the whistles and cases of its region).
pub fn users(registry: &Registry) -> anyhow::Result<Vec<NatsUser>> {
    let mut users: Vec<NatsUser> = SERVICES
        .iter()
        .map(|(name, producer, consumers)| service_user(name, *producer, consumers))
        .collect();
    for department in &registry.departments {
        let code = department.code.as_str();
        if service_names().contains(&code) || code == "whistle-admin" {
            anyhow::bail!("department code {code:?} is also the name of a service's NATS user");
        }
        if department.supervises {
            let (Some(whistles), Some(cases)) = (
                registry.region_filter("whistle", &department.region_code),
                registry.region_filter("case", &department.region_code),
            ) else {
                anyhow::bail!(
                    "supervision department {code}: region_code {:?} is no city, district or street of the catalogue",
                    department.region_code
                );
            };
            users.push(reader(
                code,
                format!(
                    "supervision {code}: reads whistles and cases of region {}",
                    department.region_code
                ),
                &[(WHISTLES_STREAM, whistles), (CASES_STREAM, cases)],
            ));
        } else {
            users.push(reader(
                code,
                format!("department {code}: reads its own whistles"),
                &[(WHISTLES_STREAM, format!("whistle.v1.*.*.*.{code}.>"))],
            ));
        }
    }
    Ok(users)
}

/// An operator user with every permission (for `whistle up`'s own tools and the `nats` CLI).
pub fn admin_user() -> NatsUser {
    NatsUser {
        name: "whistle-admin".to_string(),
        about: "operator: every subject (whistle up only)".to_string(),
        publish: None,
        subscribe: None,
    }
}

/// Renders the `accounts { WHISTLE { ... } }` block, one nkey user per entry.
pub fn render_accounts(users: &[(NatsUser, String)]) -> String {
    let mut text = String::from("accounts {\n");
    text.push_str(&render_account(users));
    text.push_str("}\n");
    text
}

/// Renders the `WHISTLE { ... }` account alone, for an `include` inside a server's own
/// `accounts { }` block (next to its system account).
pub fn render_account(users: &[(NatsUser, String)]) -> String {
    let quote = |subjects: &[String]| {
        subjects
            .iter()
            .map(|subject| format!("          \"{subject}\"\n"))
            .collect::<String>()
    };
    let mut text = String::new();
    let _ = writeln!(text, "  {ACCOUNT} {{");
    let _ = writeln!(text, "    jetstream: enabled");
    let _ = writeln!(text, "    users: [");
    for (user, public_key) in users {
        let _ = writeln!(text, "      # {} ({})", user.name, user.about);
        let _ = write!(text, "      {{ nkey: \"{public_key}\"");
        if user.publish.is_none() && user.subscribe.is_none() {
            let _ = writeln!(text, " }}");
            continue;
        }
        let _ = writeln!(text, ", permissions: {{");
        for (direction, subjects) in [("publish", &user.publish), ("subscribe", &user.subscribe)] {
            if let Some(subjects) = subjects {
                let _ = writeln!(text, "        {direction}: {{ allow: [");
                text.push_str(&quote(subjects));
                let _ = writeln!(text, "        ] }}");
            }
        }
        let _ = writeln!(text, "      }} }}");
    }
    let _ = writeln!(text, "    ]");
    let _ = writeln!(text, "  }}");
    text
}

/// The seed file of `user` in `seed_dir`.
pub fn seed_file(seed_dir: &Path, user: &str) -> PathBuf {
    seed_dir.join(format!("{user}.nk"))
}

/// The user's nkey: read from its seed file when there is one (so regenerating keeps every
/// existing login), otherwise new and written there with mode 0600. Returns the public key.
pub fn user_key(seed_dir: &Path, user: &str) -> anyhow::Result<String> {
    let file = seed_file(seed_dir, user);
    if file.exists() {
        let seed = std::fs::read_to_string(&file)
            .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", file.display()))?;
        let key = nkeys::KeyPair::from_seed(seed.trim())
            .map_err(|error| anyhow::anyhow!("{} is no nkey seed: {error}", file.display()))?;
        return Ok(key.public_key());
    }
    std::fs::create_dir_all(seed_dir)
        .map_err(|error| anyhow::anyhow!("cannot create {}: {error}", seed_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(seed_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|error| anyhow::anyhow!("cannot protect {}: {error}", seed_dir.display()))?;
    }
    let key = nkeys::KeyPair::new_user();
    let seed = key
        .seed()
        .map_err(|error| anyhow::anyhow!("cannot encode an nkey seed: {error}"))?;
    write_private(&file, format!("{seed}\n").as_bytes())?;
    Ok(key.public_key())
}

/// Writes a file only its owner may read (mode 0600 from the start, never world-readable).
pub fn write_private(file: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut handle = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", file.display()))?;
    handle
        .write_all(contents)
        .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", file.display()))?;
    Ok(())
}

/// Generates the accounts configuration of `users` with their keys from (or new in) `seed_dir`:
/// the whole `accounts { }` block, or with `account_only` the `WHISTLE { }` account alone.
pub fn generate(
    users: &[NatsUser],
    seed_dir: &Path,
    header: &str,
    account_only: bool,
) -> anyhow::Result<String> {
    let mut keyed = Vec::with_capacity(users.len());
    for user in users {
        keyed.push((user.clone(), user_key(seed_dir, &user.name)?));
    }
    let mut text = String::new();
    for line in header.lines() {
        let _ = writeln!(text, "# {line}");
    }
    text.push('\n');
    if account_only {
        text.push_str(&render_account(&keyed));
    } else {
        text.push_str(&render_accounts(&keyed));
    }
    Ok(text)
}

/// The configuration of `whistle up`'s private server (and of tests that check permissions):
/// every user of the registry plus `whistle-admin`, written to `<dir>/nats-accounts.conf` with the
/// seeds in `<dir>/nkeys/`. Returns the configuration file.
pub fn write_local(dir: &Path, registry: &Registry) -> anyhow::Result<PathBuf> {
    let mut all = users(registry)?;
    all.push(admin_user());
    let text = generate(
        &all,
        &dir.join("nkeys"),
        "generated by whistle up: the users of the private nats-server; no anonymous access",
        false,
    )?;
    let file = dir.join("nats-accounts.conf");
    write_private(&file, text.as_bytes())?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::from_catalogue_json(include_str!("../../../deploy/demo/catalogue.json"))
            .expect("demo catalogue")
    }

    #[test]
    fn departments_read_only_their_own_whistles() {
        let users = users(&registry()).expect("users");
        let sanitation = users
            .iter()
            .find(|user| user.name == "zw-sanitation")
            .expect("department user");
        assert_eq!(
            sanitation.subscribe.as_deref(),
            Some(
                &[
                    "whistle.v1.*.*.*.zw-sanitation.>".to_string(),
                    "_INBOX.zw-sanitation.>".to_string()
                ][..]
            )
        );
        let publish = sanitation.publish.as_ref().expect("publish");
        assert!(
            publish
                .iter()
                .all(|subject| subject.starts_with("$JS.API.") || subject.starts_with("$JS.ACK.")),
            "{publish:?}"
        );
    }

    #[test]
    fn supervisors_read_their_region() {
        let registry = registry();
        let users = users(&registry).expect("users");
        let city = users
            .iter()
            .find(|user| user.name == "sy-supervision")
            .expect("city supervision");
        assert!(
            city.subscribe
                .as_ref()
                .expect("subscribe")
                .contains(&"whistle.v1.420300.>".to_string())
        );
        let district = users
            .iter()
            .find(|user| user.name == "zw-supervision")
            .expect("district supervision");
        assert!(
            district
                .subscribe
                .as_ref()
                .expect("subscribe")
                .contains(&"case.v1.420300.420303.>".to_string())
        );
        assert_eq!(
            registry.region_filter("whistle", "420303003").as_deref(),
            Some("whistle.v1.420300.420303.chechenglu.>")
        );
    }

    #[test]
    fn services_publish_only_their_kinds() {
        let users = users(&registry()).expect("users");
        let gateway = users
            .iter()
            .find(|user| user.name == "department-gateway")
            .expect("gateway");
        assert!(
            !gateway
                .publish
                .as_ref()
                .expect("publish")
                .iter()
                .any(|subject| !subject.starts_with('$')),
            "the gateway publishes no events"
        );
        let intake = users
            .iter()
            .find(|user| user.name == "intake")
            .expect("intake");
        assert!(
            intake
                .publish
                .as_ref()
                .expect("publish")
                .contains(&"case.v1.*.*.*.reported".to_string())
        );
    }

    #[test]
    fn keys_are_kept_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = user_key(dir.path(), "intake").expect("key");
        let again = user_key(dir.path(), "intake").expect("key");
        assert_eq!(first, again);
        assert!(first.starts_with('U'));
        let mode = std::fs::metadata(seed_file(dir.path(), "intake"))
            .expect("seed file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
