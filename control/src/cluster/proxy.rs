//! HTTP requests for a call homed on another node: the receiving node forwards the request
//! (method, path, query, body, `Authorization`, `Content-Type`, `X-Request-Id`) to the home's
//! `advertise_url` with [`HOP_HEADER`] and returns its answer unchanged. A request carrying the
//! hop header is served where it arrives when the call is homed there, and refused (503
//! `cluster_unavailable`) otherwise: a request never travels more than one hop, and a client
//! sending the header cannot make a second copy of a call.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use greenroom_proto::{CallCid, CallType};

use super::{ClusterError, Route, HOP_HEADER};
use crate::error::ApiError;
use crate::state::AppState;

/// Request headers carried to the home node.
const FORWARDED: &[&str] = &["authorization", "content-type", "x-request-id", "accept"];

/// Response headers carried back.
const RETURNED: &[&str] = &["content-type", "x-request-id", "retry-after"];

/// The call a `/v1/calls/{type}/{id}[/...]` path names, if any.
pub fn call_of_path(path: &str) -> Option<CallCid> {
    let rest = path.strip_prefix("/v1/calls/")?;
    let mut parts = rest.split('/');
    let ty: CallType = parts.next()?.parse().ok()?;
    let id = parts.next()?;
    CallCid::new(ty, id).ok()
}

/// The middleware: serves locally what is local (and everything when cluster mode is off),
/// forwards the rest to the call's home.
pub async fn forward_to_home(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(cluster) = state.cluster.get().cloned() else {
        return next.run(req).await;
    };
    let Some(cid) = call_of_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let hop = req.headers().contains_key(HOP_HEADER);
    let home = match cluster.route(&state, &cid).await {
        Ok(Route::Local) => return next.run(req).await,
        // Forwarded here, but the call is homed elsewhere (it moved, or the header was sent
        // by a client): never a second hop, never a second copy of the call.
        Ok(Route::Remote(_)) if hop => {
            return ApiError::from(ClusterError::Unavailable(
                "the call is homed on another node".into(),
            ))
            .into_response()
        }
        Ok(Route::Remote(home)) => home,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match forward(&cluster.http, &home.advertise_url, req, &state).await {
        Ok(r) => r,
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn forward(
    http: &reqwest::Client,
    base: &str,
    req: Request,
    state: &AppState,
) -> Result<Response, ClusterError> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let limit = state.config.limits.max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        // Over the limit, or the client went away: answered as the home would (413).
        Err(_) => return Ok(ApiError::TooLarge.into_response()),
    };
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
    let mut out = http
        .request(method, format!("{base}{path}"))
        .header(HOP_HEADER, "1")
        .body(body);
    for name in FORWARDED {
        if let Some(v) = parts.headers.get(*name) {
            out = out.header(*name, v.as_bytes());
        }
    }
    let resp = out
        .send()
        .await
        .map_err(|e| ClusterError::Unavailable(format!("the call's home node: {e}")))?;
    let status = StatusCode::from_u16(resp.status().as_u16())
        .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
    let mut headers = HeaderMap::new();
    for name in RETURNED {
        if let Some(v) = resp.headers().get(*name) {
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                headers.insert(*name, v);
            }
        }
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ClusterError::Unavailable(format!("the call's home node: {e}")))?;
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_paths_are_recognised() {
        let c = call_of_path("/v1/calls/audio_room/r1/user_permissions").unwrap();
        assert_eq!(c.to_string(), "audio_room:r1");
        assert_eq!(
            call_of_path("/v1/calls/default/x").unwrap().to_string(),
            "default:x"
        );
        assert!(call_of_path("/v1/calls/nope/x").is_none());
        assert!(call_of_path("/v1/groups/g").is_none());
        assert!(call_of_path("/v1/calls/default").is_none());
    }
}
