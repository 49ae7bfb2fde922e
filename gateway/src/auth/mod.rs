//! Authentication: access tokens ([`jwt`]), the caller extractor
//! ([`caller`]) and the `/auth` and `/me` endpoints ([`routes`]).

pub mod caller;
pub mod jwt;
pub mod routes;
