//! Incus REST API client.
//!
//! - [`Client`] talks to one server over a unix socket or HTTPS ([`transport`]), found like
//!   the incus CLI does ([`config`]), with one request core ([`Client::send`],
//!   [`Client::send_operation`], [`Client::websocket`]).
//! - One module per API resource adds typed methods: [`server`], [`cluster`],
//!   [`instances`], [`networks`], [`storage`], [`images`], [`projects`],
//!   [`operations`], [`events`], [`exec`], [`console`].
//! - Errors ([`Error`]) carry Incus's own message and the request that failed.
//!
//! ```no_run
//! # async fn demo() -> ic_incus::Result<()> {
//! use ic_incus::{Client, InstancesPost};
//! // The incus CLI's default remote (or `Some("name")`), in project "shop".
//! let client = Client::from_cli_config(None)?.with_project("shop");
//! client.require_extension("instance_auto_restart", "restart: on-failure").await?;
//! for m in client.cluster_members().await? {
//!     println!("{} {} {:?}", m.server_name, m.status, m.labels());
//! }
//! let mut req = InstancesPost::from_image_alias("web-1", "testapp/v1");
//! req.start = true;
//! client.create_instance(&req, Some("node2")).await?.wait().await?;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod cluster;
pub mod config;
pub mod console;
pub mod error;
pub mod events;
pub mod exec;
pub mod images;
pub mod instances;
pub mod networks;
pub mod operations;
pub mod projects;
pub mod safety;
pub mod server;
pub mod storage;
pub mod transport;

pub use client::{Client, RawResponse, Request, Scope, api_path, encode_component, requests_sent};
pub use cluster::{Cluster, ClusterMember, ClusterMemberPut};
pub use console::ConsoleSession;
pub use error::{Error, RequestLabel, Result};
pub use events::{Event, EventFilter, EventStream, LifecycleEvent};
pub use exec::{ExecIo, ExecOutput, ExecRequest, ExecSession, ExecStreams};
pub use images::{Image, ImageAlias, ImageAliasEntry, ImageUpdateSource};
pub use instances::{
    Devices, FileContent, FileOptions, Instance, InstanceFile, InstancePut, InstanceSource,
    InstanceState, InstanceStatePut, InstancesPost,
};
pub use networks::{
    Network, NetworkAcl, NetworkAclRule, NetworkAddress, NetworkPut, NetworkState, NetworksPost,
};
pub use operations::{Operation, PendingOperation};
pub use projects::{Project, ProjectPut, ProjectsPost};
pub use server::{ServerEnvironment, ServerInfo, extensions};
pub use storage::{StoragePool, StorageVolume, StorageVolumePut, StorageVolumesPost};
