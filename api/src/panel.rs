//! The web admin panel: its static assets (`api/panel/`), compiled into the
//! binary with `include_str!`, served at `/` and `/panel/{asset}` without a
//! token (they hold no data: the page signs in with a token and calls the
//! API like any client). Each answer carries its Content-Type, a strict
//! Content-Security-Policy (everything from this origin only, no inline
//! script or style), `nosniff`, and an ETag from the content's blake3 with
//! `Cache-Control: no-cache`, so a browser revalidates and a new version
//! of the binary is picked up at once.

use std::sync::OnceLock;

use crate::extract::ApiPath;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The policy every panel answer carries: nothing from another origin, no
/// inline script, no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// URL prefix of the panel's assets.
pub const ASSET_PREFIX: &str = "/panel/";

/// One compiled-in file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every asset of the panel; `index.html` is also served at `/`.
pub const ASSETS: [Asset; 4] = [
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../panel/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../panel/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../panel/app.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../panel/icon.svg"),
    },
];

/// Whether `path` is one of the panel's public paths (no token needed).
pub fn is_panel_path(path: &str) -> bool {
    path == "/" || path.starts_with(ASSET_PREFIX)
}

/// The quoted ETag of each asset, in [`ASSETS`] order, hashed once.
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &blake3::hash(a.body.as_bytes()).to_hex()[..32]))
            .collect()
    })
}

fn serve(index: usize, headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    res
}

/// `GET /`: the panel's page.
pub(crate) async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

/// `GET /panel/{asset}`: one of [`ASSETS`], else 404.
pub(crate) async fn asset(ApiPath(name): ApiPath<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.name == name) {
        Some(i) => serve(i, &headers),
        None => ApiError::not_found(format!("the panel has no asset {name:?}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_served() {
        let page = ASSETS[0].body;
        for a in &ASSETS[1..] {
            assert!(
                page.contains(&format!("{ASSET_PREFIX}{}", a.name)),
                "index.html does not load {}",
                a.name
            );
        }
        // Nothing from another origin, nothing inline.
        // (The SVG namespace is a name, not a link.)
        for a in &ASSETS {
            let body = a.body.replace("http://www.w3.org/2000/svg", "");
            assert!(!body.contains("http://"), "{} links out", a.name);
            assert!(!body.contains("https://"), "{} links out", a.name);
        }
        assert!(!page.contains("<script>"), "inline script in index.html");
        assert!(!page.contains("style="), "inline style in index.html");
    }

    #[test]
    fn panel_paths() {
        assert!(is_panel_path("/"));
        assert!(is_panel_path("/panel/app.js"));
        assert!(!is_panel_path("/api/v1/clustering/nodes"));
        assert!(!is_panel_path("/panelx"));
    }

    #[test]
    fn etag_revalidates() {
        let mut h = HeaderMap::new();
        let first = serve(1, &h);
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        h.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(serve(1, &h).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            first.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
    }
}
