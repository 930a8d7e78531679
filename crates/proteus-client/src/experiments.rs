//! Experiments on feature flags (`/v1/experiments`). Requests carry the API key of
//! [`Client::with_api_key`] when the server requires one.

use serde_json::{Value, json};

use crate::{Client, ClientError, encode};

impl Client {
    fn experiment_path(id: &str) -> String {
        format!("/v1/experiments/{}", encode(id))
    }

    /// Creates a draft from `definition`; an invalid one is a 400 problem whose `errors` list
    /// each problem with its JSON pointer.
    pub async fn create_experiment(&self, definition: &Value) -> Result<Value, ClientError> {
        let request = self.http.post(self.url("/v1/experiments")).json(definition);
        let response = self.send(self.flag_request(request)).await?;
        self.json(response).await
    }

    /// Replaces the definition of a draft.
    pub async fn redefine_experiment(
        &self,
        id: &str,
        definition: &Value,
    ) -> Result<Value, ClientError> {
        let request = self
            .http
            .put(self.url(&Client::experiment_path(id)))
            .json(definition);
        let response = self.send(self.flag_request(request)).await?;
        self.json(response).await
    }

    /// Every experiment (`{"experiments": [...]}`).
    pub async fn list_experiments(&self) -> Result<Value, ClientError> {
        let request = self.http.get(self.url("/v1/experiments"));
        let response = self.send(self.flag_request(request)).await?;
        self.json(response).await
    }

    pub async fn get_experiment(&self, id: &str) -> Result<Value, ClientError> {
        let request = self.http.get(self.url(&Client::experiment_path(id)));
        let response = self.send(self.flag_request(request)).await?;
        self.json(response).await
    }

    /// Deletes a draft or a decided experiment.
    pub async fn delete_experiment(&self, id: &str) -> Result<(), ClientError> {
        let request = self.http.delete(self.url(&Client::experiment_path(id)));
        self.send(self.flag_request(request)).await?;
        Ok(())
    }

    /// draft → running.
    pub async fn start_experiment(&self, id: &str) -> Result<Value, ClientError> {
        self.experiment_action(id, "start", &json!({})).await
    }

    /// running → stopped.
    pub async fn stop_experiment(&self, id: &str) -> Result<Value, ClientError> {
        self.experiment_action(id, "stop", &json!({})).await
    }

    /// stopped → decided with `variant`; `rollout` makes the flag serve it to everyone.
    pub async fn decide_experiment(
        &self,
        id: &str,
        variant: &str,
        rollout: bool,
        reason: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut body = json!({"variant": variant, "rollout": rollout});
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        self.experiment_action(id, "decide", &body).await
    }

    async fn experiment_action(
        &self,
        id: &str,
        action: &str,
        body: &Value,
    ) -> Result<Value, ClientError> {
        let url = self.url(&format!("{}/{action}", Client::experiment_path(id)));
        let request = self.http.post(url).json(body);
        let response = self.send(self.flag_request(request)).await?;
        self.json(response).await
    }

    /// The results now: SRM, decision hint, per arm and metric statistics.
    pub async fn experiment_results(&self, id: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("{}/results", Client::experiment_path(id)));
        let response = self.send(self.flag_request(self.http.get(url))).await?;
        self.json(response).await
    }

    /// The primary metric's lift with its interval over time: `{"points": [...]}`.
    pub async fn experiment_history(&self, id: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("{}/results/history", Client::experiment_path(id)));
        let response = self.send(self.flag_request(self.http.get(url))).await?;
        self.json(response).await
    }
}
