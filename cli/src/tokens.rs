//! Bearer tokens for people and services: the key pair `whistle up` keeps in its data folder, the
//! demo people's tokens it writes beside `demo-credentials.json`, `whistle keygen` and
//! `whistle token issue` (docs/security.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use whistle_platform::auth::{Role, SigningKey, TokenRequest};

/// How long the demo people's tokens last; `whistle up` issues new ones at every start.
pub const DEMO_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A demo person: the name `--as` takes, who, the role and the region.
#[derive(Debug, Clone, Copy)]
pub struct Persona {
    pub name: &'static str,
    pub subject: &'static str,
    pub role: Role,
    pub region: &'static str,
}

/// The people of the demo catalogue (deploy/demo/catalogue.json).
pub const PERSONAS: &[Persona] = &[
    Persona {
        name: "street",
        subject: "车城路调度中心",
        role: Role::StreetOperator,
        region: "420303003",
    },
    Persona {
        name: "community",
        subject: "zhongyue-community",
        role: Role::CommunityWorker,
        region: "420303003001",
    },
    Persona {
        name: "community:420303003001",
        subject: "zhongyue-community",
        role: Role::CommunityWorker,
        region: "420303003001",
    },
    Persona {
        name: "community:420303003002",
        subject: "jingtan-community",
        role: Role::CommunityWorker,
        region: "420303003002",
    },
    Persona {
        name: "community:420303003003",
        subject: "banshan-community",
        role: Role::CommunityWorker,
        region: "420303003003",
    },
    Persona {
        name: "reporter",
        subject: "grid-worker-17",
        role: Role::Reporter,
        region: "420303",
    },
    Persona {
        name: "callback",
        subject: "zhangwan-callback",
        role: Role::CallbackOperator,
        region: "420303",
    },
    Persona {
        name: "supervisor",
        subject: "zhangwan-supervisor",
        role: Role::Supervisor,
        region: "420303",
    },
    Persona {
        name: "city-supervisor",
        subject: "shiyan-supervisor",
        role: Role::Supervisor,
        region: "420300",
    },
    Persona {
        name: "admin",
        subject: "catalogue-admin",
        role: Role::Admin,
        region: "420300",
    },
];

/// The files of a local run's authentication, in `<data-dir>/auth/` and beside the department
/// credentials.
#[derive(Debug, Clone)]
pub struct LocalAuth {
    /// The private key (0600): only `whistle up` and `whistle token issue` read it.
    pub signing_key_file: PathBuf,
    /// `<kid> <public key>` lines: what every service verifies with.
    pub public_keys_file: PathBuf,
    /// The gateway's service token (role `service`, subject `department-gateway`).
    pub service_token_file: PathBuf,
    /// `demo-tokens.json`: persona name → token.
    pub tokens_file: PathBuf,
    pub tokens: BTreeMap<String, String>,
}

/// Where `whistle up` writes the demo people's tokens.
pub fn tokens_path(data_dir: &Path) -> PathBuf {
    data_dir.join("demo-tokens.json")
}

/// Makes the key pair on first start (kept afterwards, so tokens issued earlier stay valid) and
/// issues the demo people's tokens and the gateway's service token.
pub fn prepare_local(data_dir: &Path) -> anyhow::Result<LocalAuth> {
    let folder = data_dir.join("auth");
    std::fs::create_dir_all(&folder)?;
    let signing_key_file = folder.join("signing-key.pem");
    let public_keys_file = folder.join("public-keys.txt");
    let key = if signing_key_file.exists() {
        SigningKey::read(&signing_key_file)?
    } else {
        let key = SigningKey::generate()?;
        key.write(&signing_key_file, &public_keys_file)?;
        key
    };
    if !public_keys_file.exists() {
        key.write(&signing_key_file, &public_keys_file)?;
    }
    let mut tokens = BTreeMap::new();
    for persona in PERSONAS {
        let token = key.issue(&TokenRequest::new(
            persona.subject,
            persona.role,
            persona.region,
            DEMO_TOKEN_TTL,
        ))?;
        tokens.insert(persona.name.to_string(), token);
    }
    let service_token = key.issue(&TokenRequest::new(
        "department-gateway",
        Role::Service,
        "420300",
        DEMO_TOKEN_TTL,
    ))?;
    let service_token_file = folder.join("department-gateway.token");
    write_private(&service_token_file, &service_token)?;
    let tokens_file = tokens_path(data_dir);
    write_private(&tokens_file, &serde_json::to_string_pretty(&tokens)?)?;
    Ok(LocalAuth {
        signing_key_file,
        public_keys_file,
        service_token_file,
        tokens_file,
        tokens,
    })
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Reads `demo-tokens.json`.
pub fn read_tokens(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        anyhow::anyhow!(
            "cannot read the tokens file {}: {error} (does `whistle up` run with this --data-dir?)",
            path.display()
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}

/// Parses `30d`, `12h`, `15m`, `90s` or a number of seconds.
pub fn parse_ttl(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = match text.char_indices().last() {
        Some((index, unit)) if unit.is_ascii_alphabetic() => (&text[..index], unit),
        _ => (text, 's'),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("--ttl must be like 30d, 12h, 15m or 90s, got {text:?}"))?;
    let seconds = match unit {
        's' => number,
        'm' => number * 60,
        'h' => number * 3600,
        'd' => number * 86_400,
        _ => anyhow::bail!("--ttl must be like 30d, 12h, 15m or 90s, got {text:?}"),
    };
    if seconds == 0 {
        anyhow::bail!("--ttl must be more than 0");
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("90").expect("s"), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").expect("m"), Duration::from_secs(900));
        assert_eq!(parse_ttl("2d").expect("d"), Duration::from_secs(172_800));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("x1").is_err());
        assert!(parse_ttl("1w").is_err());
    }

    #[test]
    fn local_auth_keeps_its_key_and_writes_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = prepare_local(dir.path()).expect("prepare");
        let second = prepare_local(dir.path()).expect("again");
        let kid = |auth: &LocalAuth| SigningKey::read(&auth.signing_key_file).expect("key").kid;
        assert_eq!(kid(&first), kid(&second));
        let mode = std::fs::metadata(&first.signing_key_file)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(second.tokens.contains_key("street"));
    }
}
