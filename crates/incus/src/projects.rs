//! Projects (`/1.0/projects`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::{Client, Request, api_path};
use crate::error::Result;

/// A project.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Project {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Configuration (`features.images`, `features.profiles`, `limits.*`...).
    pub config: BTreeMap<String, String>,
    /// Users by URL.
    pub used_by: Vec<String>,
}

/// `POST /1.0/projects` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProjectsPost {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: BTreeMap<String, String>,
}

/// Writable fields of a project.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProjectPut {
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: BTreeMap<String, String>,
}

impl Client {
    /// `GET /1.0/projects?recursion=1`.
    pub async fn projects(&self) -> Result<Vec<Project>> {
        self.send(
            Request::get("/1.0/projects")
                .query("recursion", "1")
                .global(),
        )
        .await
    }

    /// `GET /1.0/projects/{name}`.
    pub async fn get_project(&self, name: &str) -> Result<Project> {
        self.send(Request::get(api_path(&["projects", name])).global())
            .await
    }

    /// `GET /1.0/projects/{name}` with its ETag (for [`Client::update_project_if_match`]).
    pub async fn get_project_with_etag(&self, name: &str) -> Result<(Project, Option<String>)> {
        self.send_with_etag(Request::get(api_path(&["projects", name])).global())
            .await
    }

    /// `GET /1.0/projects/{name}` with its ETag and the answer's `Date` header (the server's
    /// clock when it answered).
    pub async fn get_project_dated(
        &self,
        name: &str,
    ) -> Result<(Project, Option<String>, Option<String>)> {
        self.send_with_etag_and_date(Request::get(api_path(&["projects", name])).global())
            .await
    }

    /// `POST /1.0/projects`.
    pub async fn create_project(&self, req: &ProjectsPost) -> Result<()> {
        self.send_unit(Request::post("/1.0/projects").global().json(req)?)
            .await
    }

    /// `PUT /1.0/projects/{name}`.
    pub async fn update_project(&self, name: &str, put: &ProjectPut) -> Result<()> {
        self.send_unit(
            Request::put(api_path(&["projects", name]))
                .global()
                .json(put)?,
        )
        .await
    }

    /// `PUT /1.0/projects/{name}` only if it still matches `etag` (else HTTP 412). Incus
    /// compares the ETag before its write transaction: two writers that read the same ETag
    /// can both pass, and the last write wins; read the project back to know which did.
    pub async fn update_project_if_match(
        &self,
        name: &str,
        put: &ProjectPut,
        etag: Option<String>,
    ) -> Result<()> {
        self.send_unit(
            Request::put(api_path(&["projects", name]))
                .global()
                .if_match(etag)
                .json(put)?,
        )
        .await
    }

    /// `DELETE /1.0/projects/{name}` (it must be empty).
    pub async fn delete_project(&self, name: &str) -> Result<()> {
        self.send_unit(Request::delete(api_path(&["projects", name])).global())
            .await
    }
}
