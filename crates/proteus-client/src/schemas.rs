//! The schema registry (`/v1/schemas`).

use serde_json::{Value, json};

use crate::{Client, ClientError, encode};

impl Client {
    fn schema_path(event_type: &str) -> String {
        format!("/v1/schemas/{}", encode(event_type))
    }

    fn schema_body(schema: &Value, upcaster: Option<&Value>) -> Value {
        match upcaster {
            Some(upcaster) => json!({ "schema": schema, "upcaster": upcaster }),
            None => json!({ "schema": schema }),
        }
    }

    /// Registers `schema` as the next version of `event_type` (`{"version", "created"}`); an
    /// incompatible schema is a 409 problem listing each incompatibility.
    pub async fn register_schema(
        &self,
        event_type: &str,
        schema: &Value,
        upcaster: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = self.url(&Client::schema_path(event_type));
        let body = Client::schema_body(schema, upcaster);
        let response = self.send(self.http.post(url).json(&body)).await?;
        self.json(response).await
    }

    /// Whether `schema` would be accepted, and every incompatibility if not (a dry run).
    pub async fn check_schema(
        &self,
        event_type: &str,
        schema: &Value,
        upcaster: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = self.url(&format!("{}/check", Client::schema_path(event_type)));
        let body = Client::schema_body(schema, upcaster);
        let response = self.send(self.http.post(url).json(&body)).await?;
        self.json(response).await
    }

    /// Every event type with its mode and latest version.
    pub async fn list_schemas(&self) -> Result<Value, ClientError> {
        let response = self.send(self.http.get(self.url("/v1/schemas"))).await?;
        self.json(response).await
    }

    /// One event type: its mode and every version.
    pub async fn get_schemas(&self, event_type: &str) -> Result<Value, ClientError> {
        let url = self.url(&Client::schema_path(event_type));
        let response = self.send(self.http.get(url)).await?;
        self.json(response).await
    }

    /// Sets the compatibility mode (`BACKWARD`, `FULL_TRANSITIVE`, …) of `event_type`.
    pub async fn set_schema_mode(
        &self,
        event_type: &str,
        mode: &str,
    ) -> Result<Value, ClientError> {
        let url = self.url(&format!("{}/mode", Client::schema_path(event_type)));
        let response = self
            .send(self.http.put(url).json(&json!({ "mode": mode })))
            .await?;
        self.json(response).await
    }
}
