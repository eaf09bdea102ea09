//! OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}`, the shape vLLM
//! uses since 0.10.1 and the one every OpenAI client knows how to surface.

use serde::Serialize;

/// An error answer for an OpenAI-compatible client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI's `type`, e.g. `BadRequestError`.
    pub kind: &'static str,
    pub param: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: u16,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequestError", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NotFoundError", message)
    }

    /// The JSON body.
    pub fn to_json(&self) -> String {
        let envelope = Envelope {
            error: Body {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.status,
            },
        };
        serde_json::to_string(&envelope).expect("plain strings and numbers always serialize")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_shape_with_all_four_fields() {
        let e = ApiError::not_found("The model `x` does not exist.").with_param("model");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {
                "message": "The model `x` does not exist.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404
            }})
        );
        let v: serde_json::Value =
            serde_json::from_str(&ApiError::bad_request("bad").to_json()).unwrap();
        assert_eq!(v["error"]["param"], serde_json::Value::Null);
    }
}
