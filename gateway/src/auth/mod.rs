//! Authentication: access tokens ([`jwt`]), the caller extractor
//! ([`caller`]), the tokens already verified ([`verified`]) and the `/auth`
//! and `/me` endpoints ([`routes`]).

pub mod caller;
pub mod jwt;
pub mod routes;
pub mod verified;
