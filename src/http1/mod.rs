//! HTTP/1.1 on the wire, as ficus speaks it both ways: parsing heads and decoding
//! bodies ([`codec`], pure functions over byte buffers) and writing messages
//! ([`wire`]). The server ([`crate::server::h1`]) and the upstream client
//! ([`crate::upstream`]) share them.

pub mod codec;
pub mod wire;
