//! Writing the router's own answers to the client: JSON bodies, OpenAI-shaped errors, and the
//! failed answer of a server passed on. Each writer stamps the request id and records the
//! status in the request's context.

use std::time::Instant;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::Session;
use pingora::Result;

use crate::context::RequestContext;
use crate::openai::ApiError;
use crate::request_id;

/// Writes a whole JSON response.
pub async fn json(
    session: &mut Session,
    ctx: &mut RequestContext,
    status: u16,
    body: &serde_json::Value,
) -> Result<()> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    whole(
        session,
        ctx,
        status,
        "application/json",
        Bytes::from(bytes),
        &[],
    )
    .await
}

/// Writes a Prometheus text exposition.
pub async fn metrics(session: &mut Session, ctx: &mut RequestContext, text: String) -> Result<()> {
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    whole(session, ctx, 200, content_type, Bytes::from(text), &[]).await
}

/// Writes an OpenAI-shaped error, with extra headers (e.g. `Retry-After`).
pub async fn error(
    session: &mut Session,
    ctx: &mut RequestContext,
    error: &ApiError,
    extra: &[(&str, String)],
) -> Result<()> {
    let body = Bytes::from(error.to_json());
    whole(session, ctx, error.status, "application/json", body, extra).await
}

/// Writes a whole response: header, then the body in one write.
pub async fn whole(
    session: &mut Session,
    ctx: &mut RequestContext,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(&str, String)],
) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(4 + extra.len()))?;
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header(request_id::HEADER, ctx.id.header_value())?;
    for (name, value) in extra {
        header.insert_header(name.to_string(), value.as_str())?;
    }
    ctx.status = Some(status);
    ctx.responded = Some(Instant::now());
    session
        .write_response_header(Box::new(header), false)
        .await?;
    ctx.first_byte = Some(Instant::now());
    session.write_response_body(Some(body), true).await
}
