//! Projections (`/v1/projections`): the read side of CQRS.

use serde_json::Value;

use crate::{Client, ClientError, encode};

impl Client {
    fn projection_path(name: &str) -> String {
        format!("/v1/projections/{}", encode(name))
    }

    /// Creates a projection from its JSON definition (the same definition again is not a
    /// change); returns its status.
    pub async fn create_projection(
        &self,
        name: &str,
        definition: &Value,
    ) -> Result<Value, ClientError> {
        let url = self.url(&Client::projection_path(name));
        let response = self.send(self.http.put(url).json(definition)).await?;
        self.json(response).await
    }

    /// Status of one projection (`Some`) or of all of them.
    pub async fn projection_status(&self, name: Option<&str>) -> Result<Value, ClientError> {
        let path = name.map_or("/v1/projections".to_owned(), Client::projection_path);
        let response = self.send(self.http.get(self.url(&path))).await?;
        self.json(response).await
    }

    /// `pause`, `resume` or `reset` (rebuild from the first event).
    pub async fn control_projection(&self, name: &str, action: &str) -> Result<Value, ClientError> {
        let url = self.url(&format!("{}/{action}", Client::projection_path(name)));
        let response = self.send(self.http.post(url)).await?;
        self.json(response).await
    }

    pub async fn delete_projection(&self, name: &str) -> Result<(), ClientError> {
        let url = self.url(&Client::projection_path(name));
        self.send(self.http.delete(url)).await?;
        Ok(())
    }

    /// One document of a projection's read model; `None` if it has none under `key`. With
    /// `after_position`, waits (up to 5 s) until the projection has processed that position:
    /// read your own writes.
    pub async fn projection_doc(
        &self,
        name: &str,
        key: &str,
        after_position: Option<u64>,
    ) -> Result<Option<Value>, ClientError> {
        let mut path = format!("{}/docs/{}", Client::projection_path(name), encode(key));
        if let Some(position) = after_position {
            path.push_str(&format!("?wait_for_position={position}"));
        }
        match self.send(self.http.get(self.url(&path))).await {
            Ok(response) => {
                let body: Value = self.json(response).await?;
                Ok(Some(body["doc"].clone()))
            }
            Err(ClientError::Problem {
                status: 404, body, ..
            }) if body["type"] == "/problems/document-not-found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A page of a projection's documents. `params` are query pairs: `filter` =
    /// `PATH:OP:VALUE` (repeatable), `sort` = `[-]PATH`, `limit`, `cursor`,
    /// `wait_for_position`. Returns `{"items": [{"key", "doc"}], "next_cursor"}`.
    pub async fn query_projection(
        &self,
        name: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, ClientError> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let url = self.url(&format!(
            "{}/docs?{}",
            Client::projection_path(name),
            query.join("&")
        ));
        let response = self.send(self.http.get(url)).await?;
        self.json(response).await
    }
}
