//! A small blocking client of a node's HTTP API.

use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::de::DeserializeOwned;

use crate::ApiArgs;

#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Self> {
        let token = match &args.admin_token_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read admin token file {}", f.display()))?,
            None => std::env::var("HOLDFAST_ADMIN_TOKEN").map_err(|_| {
                anyhow!("no admin token: pass --admin-token-file FILE or set HOLDFAST_ADMIN_TOKEN")
            })?,
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build();
        Ok(Self {
            base: format!("http://{}", args.api),
            token: token.trim().to_string(),
            agent,
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(self.agent.get(&format!("{}{path}", self.base)), None)
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.call(self.agent.post(&format!("{}{path}", self.base)), Some(body))
    }

    /// [`Client::post`] for calls that may take long (a plugin install
    /// compiles and copies the component).
    pub fn post_slow<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let req = self
            .agent
            .post(&format!("{}{path}", self.base))
            .timeout(timeout);
        self.call(req, Some(body))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(self.agent.delete(&format!("{}{path}", self.base)), None)
    }

    fn call<T: DeserializeOwned>(
        &self,
        req: ureq::Request,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<T> {
        let req = req.set("Authorization", &format!("Bearer {}", self.token));
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) => r.into_json().context("malformed answer from the node"),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or(text);
                Err(anyhow!("{} (HTTP {code})", msg.trim()))
            }
            Err(e) => Err(anyhow!("cannot reach the node at {}: {e}", self.base)),
        }
    }
}
