//! The binary's configuration as one typed tree, resolved once: built-in defaults < the TOML
//! file of `--config` < `TOLLGATE_*` environment variables < command-line flags.
//!
//! clap already merges each flag with its environment variable (the flag wins); this module puts
//! the file and the defaults beneath them and checks every value against its limits.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const LISTEN_DEFAULT: &str = "127.0.0.1:7070";
pub const DATA_DIR_DEFAULT: &str = "./tollgate-data";
/// Shortest and longest sweep interval, in milliseconds.
pub const SWEEP_INTERVAL_MS_MIN: u64 = 10;
pub const SWEEP_INTERVAL_MS_MAX: u64 = 60_000;
/// Shortest and longest request deadline, in milliseconds.
pub const REQUEST_TIMEOUT_MS_MIN: u64 = 100;
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 600_000;
/// Largest config file read, in bytes.
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// The file the SQLite store keeps in its data dir.
const SQLITE_FILE_NAME: &str = "tollgate.db";

/// The settings a `--config` file may hold; every one is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub sweep_interval_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub engine: Option<bool>,
}

impl FileSettings {
    pub fn parse(text: &str) -> Result<Self> {
        Ok(toml::from_str(text)?)
    }

    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?
            .len();
        if size > CONFIG_FILE_BYTES_MAX {
            bail!(
                "config file {} is over {CONFIG_FILE_BYTES_MAX} bytes",
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Where the data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// The SQLite store in this directory (`DIR/tollgate.db`).
    Sqlite { data_dir: PathBuf },
    /// A PostgreSQL database shared by every node (`postgres://…`).
    Postgres { url: String },
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Database {
    /// `url` absent or `sqlite:` → the data dir; `sqlite:DIR` (or `sqlite://DIR`, or a path to
    /// `DIR/tollgate.db`) → DIR. PostgreSQL is refused until its store exists.
    pub fn resolve(url: Option<&str>, data_dir: PathBuf) -> Result<Self> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(Database::Sqlite { data_dir });
        };
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(Database::Postgres {
                url: url.to_string(),
            });
        }
        let Some(rest) = url.strip_prefix("sqlite:") else {
            bail!("unsupported database URL {url:?}: use `sqlite:[DIR]` or leave it unset");
        };
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        if rest.is_empty() {
            return Ok(Database::Sqlite { data_dir });
        }
        let path = PathBuf::from(rest);
        if path.file_name().is_some_and(|n| n == SQLITE_FILE_NAME) {
            let dir = path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            return Ok(Database::Sqlite { data_dir: dir });
        }
        if path
            .extension()
            .is_some_and(|e| e == "db" || e == "sqlite" || e == "sqlite3")
        {
            bail!(
                "the SQLite database is always DIR/{SQLITE_FILE_NAME}; give its directory: sqlite:DIR"
            );
        }
        Ok(Database::Sqlite { data_dir: path })
    }

    /// Where the data is, for messages: the data dir, or the PostgreSQL server and database
    /// without credentials.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite { data_dir } => data_dir.display().to_string(),
            Database::Postgres { url } => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
                format!("postgres://{rest}")
            }
        }
    }
}

/// What flags and environment variables gave (clap merged them, the flag winning).
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub sweep_interval_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub engine: Option<bool>,
}

/// Every setting, resolved and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub database: Database,
    /// The data dir: the SQLite store's home, and on PostgreSQL too where the keys file of a
    /// new install is written.
    pub data_dir: PathBuf,
    /// The hot-path engine in front of the embedded store.
    pub engine: bool,
    pub sweep_interval: Duration,
    pub request_timeout: Duration,
}

fn within(name: &str, value: u64, min: u64, max: u64) -> Result<u64> {
    if !(min..=max).contains(&value) {
        bail!("{name} must be between {min} and {max}, got {value}");
    }
    Ok(value)
}

impl Settings {
    pub fn resolve(file: FileSettings, over: Overrides) -> Result<Self> {
        let data_dir = over
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT));
        let database_url = over.database_url.or(file.database_url);
        let sweep = over
            .sweep_interval_ms
            .or(file.sweep_interval_ms)
            .unwrap_or(tollgate_server::config::SWEEP_INTERVAL_MS_DEFAULT);
        let timeout = over
            .request_timeout_ms
            .or(file.request_timeout_ms)
            .unwrap_or(tollgate_server::config::REQUEST_TIMEOUT_MS_DEFAULT);
        let engine = over.engine.or(file.engine).unwrap_or(false);
        let database = Database::resolve(database_url.as_deref(), data_dir.clone())?;
        let data_dir = match &database {
            Database::Sqlite { data_dir } => data_dir.clone(),
            Database::Postgres { .. } => data_dir,
        };
        if engine && matches!(database, Database::Postgres { .. }) {
            bail!(
                "engine is for the embedded SQLite store; PostgreSQL keeps state in the database"
            );
        }
        Ok(Self {
            engine,
            data_dir,
            listen: over
                .listen
                .or(file.listen)
                .unwrap_or_else(|| LISTEN_DEFAULT.to_string()),
            database,
            sweep_interval: Duration::from_millis(within(
                "sweep_interval_ms",
                sweep,
                SWEEP_INTERVAL_MS_MIN,
                SWEEP_INTERVAL_MS_MAX,
            )?),
            request_timeout: Duration::from_millis(within(
                "request_timeout_ms",
                timeout,
                REQUEST_TIMEOUT_MS_MIN,
                REQUEST_TIMEOUT_MS_MAX,
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../tollgate.example.toml");

    #[test]
    fn the_example_config_parses_and_resolves() {
        let file = FileSettings::parse(EXAMPLE).expect("tollgate.example.toml parses");
        assert_eq!(file.listen.as_deref(), Some(LISTEN_DEFAULT));
        let settings = Settings::resolve(file, Overrides::default()).unwrap();
        assert_eq!(
            settings.database,
            Database::Sqlite {
                data_dir: PathBuf::from(DATA_DIR_DEFAULT)
            }
        );
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let file = FileSettings::parse("listen = \"0.0.0.0:1\"\nsweep_interval_ms = 250").unwrap();
        let over = Overrides {
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let s = Settings::resolve(file, over).unwrap();
        assert_eq!(s.listen, "127.0.0.1:0");
        assert_eq!(s.sweep_interval, Duration::from_millis(250));
        assert_eq!(s.request_timeout, Duration::from_millis(30_000));
    }

    #[test]
    fn unknown_settings_and_out_of_range_values_are_refused() {
        assert!(FileSettings::parse("listn = \"x\"").is_err());
        let file = FileSettings::parse("sweep_interval_ms = 0").unwrap();
        assert!(Settings::resolve(file, Overrides::default()).is_err());
    }

    #[test]
    fn database_urls() {
        let dir = || PathBuf::from("d");
        let sqlite = |p: &str| Database::Sqlite {
            data_dir: PathBuf::from(p),
        };
        assert_eq!(Database::resolve(None, dir()).unwrap(), sqlite("d"));
        assert_eq!(
            Database::resolve(Some("sqlite:"), dir()).unwrap(),
            sqlite("d")
        );
        assert_eq!(
            Database::resolve(Some("sqlite:///var/tg"), dir()).unwrap(),
            sqlite("/var/tg")
        );
        assert_eq!(
            Database::resolve(Some("sqlite:/var/tg/tollgate.db"), dir()).unwrap(),
            sqlite("/var/tg")
        );
        let pg = Database::resolve(Some("postgres://u:secret@h:5432/db?sslmode=disable"), dir())
            .unwrap();
        assert_eq!(
            pg,
            Database::Postgres {
                url: "postgres://u:secret@h:5432/db?sslmode=disable".into()
            }
        );
        assert_eq!(
            pg.describe(),
            "postgres://h:5432/db",
            "no credentials in messages"
        );
        assert!(!format!("{pg:?}").contains("secret"));
        assert!(Database::resolve(Some("mysql://x"), dir()).is_err());
        assert!(Database::resolve(Some("sqlite:/x/other.db"), dir()).is_err());
    }
}
