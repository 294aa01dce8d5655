//! The console's stylesheet and script, compiled into the binary (no CDN, works offline).
//! Pages link them with a digest of their content in the address, so a browser may keep them
//! for long and still never uses a stale copy after an upgrade.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Every asset: its name, content type and content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
];

/// The digest of every asset's content, in the order of [`ASSETS`].
fn digests() -> &'static [String] {
    static DIGESTS: OnceLock<Vec<String>> = OnceLock::new();
    DIGESTS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, content)| {
                let digest = Sha256::digest(content.as_bytes());
                digest[..6].iter().map(|b| format!("{b:02x}")).collect()
            })
            .collect()
    })
}

/// The address of asset `name`, with its content's digest.
pub fn href(name: &str) -> String {
    let version = ASSETS
        .iter()
        .position(|(n, _, _)| *n == name)
        .map_or("", |i| digests()[i].as_str());
    format!("/ui/assets/{name}?v={version}")
}

/// `GET /ui/assets/{file}`.
pub async fn serve(Path(file): Path<String>) -> Response {
    let Some((_, content_type, content)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut response = (*content).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}
