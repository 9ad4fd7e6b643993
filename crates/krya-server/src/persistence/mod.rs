//! Where Krya keeps things: the database (`db`, SQLite or PostgreSQL, and its migrations),
//! files (`blobs`, a folder or an S3-compatible bucket) and the model registry.

pub mod blobs;
pub mod db;
pub mod registry;
