//! Operating an install: online backups and restores of the embedded store, and rotating the
//! admin token (docs/operations.md).

use crate::{BackupArgs, RestoreArgs, RotateTokenArgs};
use anyhow::{bail, Result};

pub async fn backup(_args: BackupArgs) -> Result<()> {
    bail!("not built yet")
}

pub async fn restore(_args: RestoreArgs) -> Result<()> {
    bail!("not built yet")
}

pub async fn rotate_token(_args: RotateTokenArgs) -> Result<()> {
    bail!("not built yet")
}
