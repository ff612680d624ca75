//! Storage backends of the suite: which store the servers run on (`TOLLGATE_TEST_BACKEND`),
//! and on PostgreSQL a fresh database per server, created through `TOLLGATE_TEST_POSTGRES_URL`
//! and dropped with the server.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Env: which store the suite's servers run on (`sqlite`, the default, or `postgres`).
pub const BACKEND_ENV: &str = "TOLLGATE_TEST_BACKEND";
/// Env: a PostgreSQL URL whose user may create databases, e.g.
/// `postgres://postgres@127.0.0.1:5432/test`. Test databases are created beside its database.
pub const POSTGRES_URL_ENV: &str = "TOLLGATE_TEST_POSTGRES_URL";
/// The name prefix of every test database (scripts/test-postgres.sh drops leftovers by it).
pub const TEST_DATABASE_PREFIX: &str = "tg_t_";
/// How long creating or dropping a test database may take.
const DATABASE_ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Backend {
    Sqlite,
    Postgres { admin_url: String },
}

impl Backend {
    /// `TOLLGATE_TEST_BACKEND`: unset, empty or `sqlite` → SQLite; `postgres` → PostgreSQL
    /// through `TOLLGATE_TEST_POSTGRES_URL`, which must then be set.
    pub fn from_env() -> Backend {
        let backend = std::env::var(BACKEND_ENV).unwrap_or_default();
        match backend.trim().to_ascii_lowercase().as_str() {
            "" | "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => match postgres_url_from_env() {
                Some(admin_url) => Backend::Postgres { admin_url },
                None => panic!(
                    "{BACKEND_ENV}=postgres needs {POSTGRES_URL_ENV}, a PostgreSQL URL whose user \
                     may create databases, e.g. postgres://postgres@127.0.0.1:5432/test"
                ),
            },
            other => panic!("{BACKEND_ENV}={other:?}: expected `sqlite` or `postgres`"),
        }
    }

    pub fn is_postgres() -> bool {
        matches!(Backend::from_env(), Backend::Postgres { .. })
    }
}

/// `TOLLGATE_TEST_POSTGRES_URL`, if set and not empty.
pub fn postgres_url_from_env() -> Option<String> {
    std::env::var(POSTGRES_URL_ENV)
        .ok()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
}

/// The parts of a `postgres://[user[:password]@]host[:port][/database][?params]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgUrl {
    /// `postgres://user@` (scheme and user info, verbatim).
    prefix: String,
    /// `host:port` (verbatim; `host` alone when the port is left out).
    pub host_port: String,
    pub database: String,
    /// `?…` or empty.
    query: String,
}

impl PgUrl {
    #[track_caller]
    pub fn parse(url: &str) -> PgUrl {
        let scheme_end = ["postgres://", "postgresql://"]
            .iter()
            .find(|s| url.starts_with(*s))
            .map(|s| s.len())
            .unwrap_or_else(|| {
                panic!("{POSTGRES_URL_ENV} must be a postgres:// URL (not key=value), got {url:?}")
            });
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let (user_info, host_port) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let tail = &rest[authority_end..];
        let (path, query) = match tail.find('?') {
            Some(q) => (&tail[..q], &tail[q..]),
            None => (tail, ""),
        };
        PgUrl {
            prefix: format!("{}{user_info}", &url[..scheme_end]),
            host_port: host_port.to_string(),
            database: path.trim_start_matches('/').to_string(),
            query: query.to_string(),
        }
    }

    /// The `(host, port)` to open a TCP connection to (port 5432 when left out).
    pub fn socket(&self) -> (String, u16) {
        let port = |p: &str| -> u16 {
            p.parse()
                .unwrap_or_else(|_| panic!("bad port in {:?}", self.host_port))
        };
        if let Some(rest) = self.host_port.strip_prefix('[') {
            let (host, tail) = rest
                .split_once(']')
                .unwrap_or_else(|| panic!("bad IPv6 host in {:?}", self.host_port));
            return (host.to_string(), tail.strip_prefix(':').map_or(5432, port));
        }
        match self.host_port.rsplit_once(':') {
            Some((host, p)) => (host.to_string(), port(p)),
            None => (self.host_port.clone(), 5432),
        }
    }

    pub fn with_database(&self, database: &str) -> PgUrl {
        PgUrl {
            database: database.to_string(),
            ..self.clone()
        }
    }

    pub fn with_host_port(&self, host_port: &str) -> PgUrl {
        PgUrl {
            host_port: host_port.to_string(),
            ..self.clone()
        }
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}/{}{}",
            self.prefix, self.host_port, self.database, self.query
        )
    }
}

/// A fresh PostgreSQL database `tg_t_<random>`, dropped (its connections terminated first)
/// when the last owner lets go of it.
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
}

impl PgDatabase {
    /// `CREATE DATABASE tg_t_<random>` through `admin_url`.
    pub async fn create(admin_url: &str) -> PgDatabase {
        let name = format!("{TEST_DATABASE_PREFIX}{:016x}", unique_u64());
        let sql = format!("CREATE DATABASE \"{name}\"");
        let admin = admin_url.to_string();
        let created = tokio::time::timeout(DATABASE_ADMIN_TIMEOUT, async {
            let client = pg_connect(&admin).await?;
            client.batch_execute(&sql).await
        })
        .await;
        match created {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{sql} through {POSTGRES_URL_ENV} failed: {e:?}"),
            Err(_) => panic!("{sql} took over {DATABASE_ADMIN_TIMEOUT:?}"),
        }
        PgDatabase {
            admin_url: admin_url.to_string(),
            name,
        }
    }

    /// The URL of this database (the admin URL with its database name replaced).
    pub fn url(&self) -> String {
        self.pg_url().to_string()
    }

    pub fn pg_url(&self) -> PgUrl {
        PgUrl::parse(&self.admin_url).with_database(&self.name)
    }

    /// A direct connection to this database, for tests that look inside.
    pub async fn connect(&self) -> tokio_postgres::Client {
        pg_connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e:?}", self.name))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime (where blocking on another future is not allowed): the
        // cleanup gets a thread and a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                tokio::time::timeout(DATABASE_ADMIN_TIMEOUT, drop_database(&admin, &name))
                    .await
                    .map_err(|_| "timed out".to_string())?
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let client = pg_connect(admin_url).await.map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..20 {
        let terminate = client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await;
        match client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await
        {
            Ok(()) => return Ok(()),
            // "is being accessed by other users": a backend was still on its way out.
            Err(e) => last = format!("{e:?} (terminating its backends: {terminate:?})"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// A client on `url`, its connection driven by a spawned task.
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// 64 bits unlikely to repeat across processes and calls: a randomly keyed hash of the pid, the
/// time and a counter.
fn unique_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}
