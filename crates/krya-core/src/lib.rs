//! What the server, the worker, the CLI and (through the API) the studio share, with no IO:
//!
//! - `ids`: row ids that sort in creation order, and time;
//! - `status`: a job's status;
//! - `error`: the stable error codes and the HTTP status of each;
//! - `events`: the job events sent to a job's owner (SSE, across processes);
//! - `images`: image formats sniffed from their bytes, decoding within a pixel limit;
//! - `protocol`: the live canvas's wire format (MessagePack messages, JPEG frames).

pub mod error;
pub mod events;
pub mod ids;
pub mod images;
pub mod protocol;
pub mod status;
