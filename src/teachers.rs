//! Teachers from a `[…backend]` recipe section, checked before any long work starts.

use std::sync::Arc;

use anyhow::{Context, bail};
use distill_teacher::backend::Teacher;
use distill_teacher::backend::local::LocalTeacher;
use distill_teacher::backend::openai::OpenAiClient;
use distill_teacher::run::{BackendConfig, BackendKind};

/// Build the teachers; an unreachable endpoint or a missing model directory is an error here.
pub fn build(backend: &BackendConfig) -> anyhow::Result<Vec<Arc<dyn Teacher>>> {
    match backend.kind {
        BackendKind::Openai => {
            if backend.endpoints.is_empty() {
                bail!("backend kind openai needs at least one endpoint");
            }
            backend
                .endpoints
                .iter()
                .map(|e| {
                    preflight(&e.base_url)?;
                    let client = OpenAiClient::new(e.clone(), None).map_err(anyhow::Error::msg)?;
                    Ok(Arc::new(client) as Arc<dyn Teacher>)
                })
                .collect()
        }
        BackendKind::Local => {
            let local = backend
                .local
                .as_ref()
                .context("backend kind local needs `local = { model_dir = … }`")?;
            check_model_dir(&local.model_dir)?;
            let kind: distill_models::device::DeviceKind =
                backend.device.parse().map_err(anyhow::Error::msg)?;
            crate::backend::dispatch!(kind, |B, device| Ok(vec![Arc::new(LocalTeacher::<B>::load(
                local, device
            )?)
                as Arc<dyn Teacher>]))
        }
    }
}

pub fn check_model_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if !dir.join("config.json").exists() {
        bail!("model directory {} does not exist or has no config.json", dir.display());
    }
    Ok(())
}

/// Fail early on an endpoint that does not answer at all (any HTTP answer counts as alive).
pub fn preflight(base_url: &str) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/models", base_url.trim_end_matches('/'));
    agent
        .get(&url)
        .call()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("teacher endpoint {base_url} is unreachable: {e}"))
}
