//! The HTTP API: the route table and the handlers that are not part of a feature folder
//! (`jobs/`, `generations/` and `realtime/` hold their own).

pub mod account;
pub mod auth;
pub mod events;
pub mod feed;
pub mod files;
pub mod guard;
pub mod limits;
pub mod media;
pub mod models;
pub mod moderation;
pub mod openapi;
pub mod router;
pub mod segment;
pub mod serve;
pub mod signup;
pub mod storage;
pub mod studio;
pub mod tiles;
