//! The web console at `/ui/` (and `/`, which redirects there): a page of plain HTML and
//! a small script, compiled into the binary, that does everything through the public
//! `/v1` API with the token the person signs in with. Nothing here reads Redis, and the
//! pages need no network but muster. These routes are not JSON API and stay out of the
//! OpenAPI document. See docs/console.md.

use super::AppState;
use super::error::ApiError;
use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../../assets/ui/index.html");
const APP_JS: &str = include_str!("../../assets/ui/app.js");
const APP_CSS: &str = include_str!("../../assets/ui/app.css");

/// Same-origin only: the console talks to this server and nothing else. Images of human
/// tasks (`payload.image_url`) may come from anywhere the browser can reach; task HTML
/// is shown in a sandboxed `srcdoc` frame without scripts. That frame inherits this
/// policy, so `frame-ancestors` must admit the console itself (`'self'`, not `'none'`);
/// `X-Frame-Options: DENY` still keeps the console out of other sites' frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob: http: https:; connect-src 'self'; frame-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// The console's routes: `/`, `/ui`, `/ui/` and its assets.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(ui_redirect))
        .route("/ui", get(ui_redirect))
        .route("/ui/", get(ui_index))
        .route("/ui/{file}", get(ui_asset))
}

/// `GET /` and `GET /ui`: to the console.
pub async fn ui_redirect() -> Redirect {
    Redirect::to("/ui/")
}

/// `GET /ui/`: the console's page.
pub async fn ui_index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /ui/{file}`: `app.js`, `app.css`.
///
/// # Errors
/// 404 for any other name.
pub async fn ui_asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    match file.as_str() {
        "app.js" => Ok(asset(APP_JS, "text/javascript; charset=utf-8")),
        "app.css" => Ok(asset(APP_CSS, "text/css; charset=utf-8")),
        "index.html" => Ok(asset(INDEX_HTML, "text/html; charset=utf-8")),
        _ => Err(ApiError::NotFound(format!("no console file {file:?}"))),
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary; revalidating them is cheap (they are small).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
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
    r
}

/// Content-Security-Policy of the interactive API docs (`/docs`, Swagger UI): its own
/// scripts only (no inline script), inline styles (Swagger UI sets style attributes),
/// `data:` images (its icons), no framing.
pub const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'";

/// Middleware: the console's protections on the interactive docs too (`/docs`): a CSP,
/// no framing (clickjacking), no MIME sniffing, no referrer.
pub async fn docs_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let docs = req.uri().path().starts_with("/docs");
    let mut r = next.run(req).await;
    if docs {
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(DOCS_CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains("/ui/app.js"));
        assert!(INDEX_HTML.contains("/ui/app.css"));
        // No CDN, no external script or stylesheet.
        for asset in [INDEX_HTML, APP_CSS] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
        }
        // The one URL in the script is the SVG namespace, an identifier, never fetched.
        let js = APP_JS.replace("'http://www.w3.org/2000/svg'", "");
        assert!(!js.contains("https://") && !js.contains("http://"));
    }
}
