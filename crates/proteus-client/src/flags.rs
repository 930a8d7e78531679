//! Feature flags: flag-set management (`/v1/flagsets`) and OFREP evaluation.

use serde_json::{Value, json};

use crate::{Client, ClientError, encode};

/// Optional parts of a change: why, and the version it was based on.
#[derive(Debug, Clone, Default)]
pub struct ChangeOptions<'a> {
    pub comment: Option<&'a str>,
    pub expected_version: Option<u64>,
    /// `strict` (default) or `flagd`.
    pub validation: Option<&'a str>,
}

impl ChangeOptions<'_> {
    fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(comment) = self.comment {
            parts.push(format!("comment={}", encode(comment)));
        }
        if let Some(version) = self.expected_version {
            parts.push(format!("expected_version={version}"));
        }
        if let Some(validation) = self.validation {
            parts.push(format!("validation={}", encode(validation)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

impl Client {
    /// Sends `key` as `X-API-Key` on flag requests.
    pub fn with_api_key(mut self, key: Option<String>) -> Client {
        self.api_key = key;
        self
    }

    pub(crate) fn flag_request(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.header("x-api-key", key),
            None => request,
        }
    }

    pub(crate) fn set_path(set: &str) -> String {
        format!("/v1/flagsets/{}", encode(set))
    }

    fn flag_path(set: &str, key: &str) -> String {
        format!("{}/flags/{}", Client::set_path(set), encode(key))
    }

    pub async fn list_flag_sets(&self) -> Result<Value, ClientError> {
        let response = self
            .send(self.flag_request(self.http.get(self.url("/v1/flagsets"))))
            .await?;
        self.json(response).await
    }

    /// The set's summary and whole document.
    pub async fn get_flag_set(&self, set: &str) -> Result<Value, ClientError> {
        let response = self
            .send(self.flag_request(self.http.get(self.url(&Client::set_path(set)))))
            .await?;
        self.json(response).await
    }

    /// Replaces the set's document (creating the set); returns its summary.
    pub async fn put_flag_set(
        &self,
        set: &str,
        document: &Value,
        options: &ChangeOptions<'_>,
    ) -> Result<Value, ClientError> {
        let url = self.url(&format!("{}{}", Client::set_path(set), options.query()));
        let response = self
            .send(self.flag_request(self.http.put(url).json(document)))
            .await?;
        self.json(response).await
    }

    pub async fn get_flag(&self, set: &str, key: &str) -> Result<Value, ClientError> {
        let response = self
            .send(self.flag_request(self.http.get(self.url(&Client::flag_path(set, key)))))
            .await?;
        self.json(response).await
    }

    /// Creates or replaces one flag.
    pub async fn put_flag(
        &self,
        set: &str,
        key: &str,
        definition: &Value,
        options: &ChangeOptions<'_>,
    ) -> Result<Value, ClientError> {
        let url = self.url(&format!(
            "{}{}",
            Client::flag_path(set, key),
            options.query()
        ));
        let response = self
            .send(self.flag_request(self.http.put(url).json(definition)))
            .await?;
        self.json(response).await
    }

    /// The kill switch (`enabled = false`) and its undo.
    pub async fn set_flag_enabled(
        &self,
        set: &str,
        key: &str,
        enabled: bool,
        options: &ChangeOptions<'_>,
    ) -> Result<Value, ClientError> {
        let action = if enabled { "enable" } else { "kill" };
        let url = self.url(&format!(
            "{}/{action}{}",
            Client::flag_path(set, key),
            options.query()
        ));
        let response = self.send(self.flag_request(self.http.post(url))).await?;
        self.json(response).await
    }

    /// Revisions newest first; only those touching `key` when given.
    pub async fn flag_history(
        &self,
        set: &str,
        key: Option<&str>,
        limit: usize,
    ) -> Result<Value, ClientError> {
        let path = match key {
            Some(key) => format!("{}/history?limit={limit}", Client::flag_path(set, key)),
            None => format!("{}/history?limit={limit}", Client::set_path(set)),
        };
        let response = self
            .send(self.flag_request(self.http.get(self.url(&path))))
            .await?;
        self.json(response).await
    }

    /// The whole set (no `key`) or one flag back to its state at `version`, as a new version.
    pub async fn restore_flags(
        &self,
        set: &str,
        key: Option<&str>,
        version: u64,
        comment: Option<&str>,
    ) -> Result<Value, ClientError> {
        let path = match key {
            Some(key) => format!("{}/restore", Client::flag_path(set, key)),
            None => format!("{}/rollback", Client::set_path(set)),
        };
        let mut body = json!({ "version": version });
        if let Some(comment) = comment {
            body["comment"] = json!(comment);
        }
        let response = self
            .send(self.flag_request(self.http.post(self.url(&path)).json(&body)))
            .await?;
        self.json(response).await
    }

    /// Evaluates one flag over OFREP. OFREP failures (a missing flag, an invalid context) are
    /// answers, not errors: they come back as the OFREP body with `errorCode`.
    pub async fn evaluate_flag(&self, key: &str, context: &Value) -> Result<Value, ClientError> {
        let url = self.url(&format!("/ofrep/v1/evaluate/flags/{}", encode(key)));
        let response = self
            .flag_request(self.http.post(url).json(&json!({ "context": context })))
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        if response.status().as_u16() == 401 {
            return Err(ClientError::Problem {
                status: 401,
                title: "Unauthorized".into(),
                detail:
                    "the server needs an API key for flags: pass --api-key or set PROTEUS_API_KEY"
                        .into(),
                body: Value::Null,
            });
        }
        self.json(response).await
    }
}

impl Client {
    /// Schedules `change` (`{"kind": "set_state", "key": …, "state": "DISABLED"}`, …) at `at`
    /// (RFC 3339, or milliseconds since the epoch as a JSON number); returns the schedule.
    pub async fn schedule_flag_change(
        &self,
        set: &str,
        at: &Value,
        change: &Value,
        comment: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut body = json!({ "at": at, "change": change });
        if let Some(comment) = comment {
            body["comment"] = json!(comment);
        }
        let url = self.url(&format!("{}/schedules", Client::set_path(set)));
        let response = self
            .send(self.flag_request(self.http.post(url).json(&body)))
            .await?;
        self.json(response).await
    }

    /// A progressive rollout of `variant` to `key`: one scheduled step per `(percent, at)`
    /// (`at` as RFC 3339 or milliseconds; `None` only for a first step that starts now).
    pub async fn start_rollout(
        &self,
        set: &str,
        key: &str,
        variant: &str,
        steps: &[(u8, Option<Value>)],
        comment: Option<&str>,
    ) -> Result<Value, ClientError> {
        let steps: Vec<Value> = steps
            .iter()
            .map(|(percent, at)| match at {
                Some(at) => json!({ "percent": percent, "at": at }),
                None => json!({ "percent": percent }),
            })
            .collect();
        let mut body = json!({ "variant": variant, "steps": steps });
        if let Some(comment) = comment {
            body["comment"] = json!(comment);
        }
        let url = self.url(&format!("{}/rollout", Client::flag_path(set, key)));
        let response = self
            .send(self.flag_request(self.http.post(url).json(&body)))
            .await?;
        self.json(response).await
    }

    /// Cancels the steps of `key`'s rollout not yet applied; the flag stays where it is.
    pub async fn pause_rollout(&self, set: &str, key: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("{}/rollout/pause", Client::flag_path(set, key)));
        let response = self.send(self.flag_request(self.http.post(url))).await?;
        self.json(response).await
    }

    /// The set's stale flags: not evaluated for `unused_for`, or serving one outcome to
    /// everyone for `uniform_for` (durations like `30d`, or `off`; `None` is 30 days).
    pub async fn stale_flags(
        &self,
        set: &str,
        unused_for: Option<&str>,
        uniform_for: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut query = Vec::new();
        if let Some(window) = unused_for {
            query.push(format!("unused_for={}", encode(window)));
        }
        if let Some(window) = uniform_for {
            query.push(format!("uniform_for={}", encode(window)));
        }
        let url = self.url(&format!(
            "{}/stale?{}",
            Client::set_path(set),
            query.join("&")
        ));
        let response = self.send(self.flag_request(self.http.get(url))).await?;
        self.json(response).await
    }

    /// Pending scheduled changes, soonest first.
    pub async fn flag_schedules(&self, set: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("{}/schedules", Client::set_path(set)));
        let response = self.send(self.flag_request(self.http.get(url))).await?;
        self.json(response).await
    }

    pub async fn cancel_flag_schedule(&self, set: &str, id: &str) -> Result<(), ClientError> {
        let url = self.url(&format!(
            "{}/schedules/{}",
            Client::set_path(set),
            encode(id)
        ));
        self.send(self.flag_request(self.http.delete(url))).await?;
        Ok(())
    }
}
