//! Tool calls: a chat request whose `tool_choice` forces a function (`"required"`, or
//! `{"type": "function", "function": {"name": …}}`) is answered with a call to it, arguments
//! made up from the function's JSON-schema `parameters`, in vLLM's shape. With `"auto"`,
//! `"none"` or no choice the sim answers text: it has no model to decide with.

use serde_json::{json, Map, Value};

use super::tokenizer::output_token;
use crate::openai::ApiError;

/// The function a request forces.
#[derive(Debug, Clone, PartialEq)]
pub struct Forced {
    pub name: String,
    pub parameters: Value,
}

fn function_of(tool: &Value) -> Option<(&str, &Value)> {
    let function = tool.get("function")?;
    let name = function.get("name")?.as_str()?;
    Some((name, function.get("parameters").unwrap_or(&Value::Null)))
}

/// The function `tool_choice` forces among `tools`, if it forces one; a choice that names no
/// listed tool is the client's mistake (400), as in vLLM.
pub fn forced(tools: Option<&[Value]>, choice: Option<&Value>) -> Result<Option<Forced>, ApiError> {
    let tools = tools.unwrap_or(&[]);
    let bad = |message: String| Err(ApiError::bad_request(message).with_param("tool_choice"));
    let wanted = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s == "auto" || s == "none" => return Ok(None),
        Some(Value::String(s)) if s == "required" => None,
        Some(Value::String(s)) => return bad(format!("tool_choice must be \"auto\", \"none\", \"required\" or a function, got {s:?}")),
        Some(named) => match named.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
            Some(name) => Some(name),
            None => return bad("tool_choice must name a function: {\"type\": \"function\", \"function\": {\"name\": …}}".into()),
        },
    };
    let listed: Vec<(&str, &Value)> = tools.iter().filter_map(function_of).collect();
    let found = match wanted {
        None => listed.first(),
        Some(name) => listed.iter().find(|(n, _)| *n == name),
    };
    match found {
        Some((name, parameters)) => Ok(Some(Forced {
            name: name.to_string(),
            parameters: (*parameters).clone(),
        })),
        None if wanted.is_none() => {
            bad("tool_choice is \"required\" but no tools are given".into())
        }
        None => bad(format!(
            "tool_choice names {:?}, which is not among the tools",
            wanted.unwrap_or_default()
        )),
    }
}

/// Arguments for `parameters` (a JSON schema): each property a value of its type, text made of
/// the sim's tokens.
pub fn arguments(parameters: &Value, seed: u64, key: u64) -> String {
    let mut args = Map::new();
    if let Some(properties) = parameters.get("properties").and_then(Value::as_object) {
        for (i, (name, schema)) in properties.iter().enumerate() {
            let value = match schema
                .get("enum")
                .and_then(Value::as_array)
                .and_then(|e| e.first())
            {
                Some(first) => first.clone(),
                None => match schema.get("type").and_then(Value::as_str) {
                    Some("integer") => json!(i + 1),
                    Some("number") => json!(i as f64 + 0.5),
                    Some("boolean") => json!(true),
                    Some("array") => json!([]),
                    Some("object") => json!({}),
                    _ => json!(output_token(seed, key, i as u32).trim()),
                },
            };
            args.insert(name.clone(), value);
        }
    }
    Value::Object(args).to_string()
}

/// The `tool_calls` of an assistant message calling `forced`.
pub fn calls(forced: &Forced, id: &str, seed: u64, key: u64) -> Vec<Value> {
    vec![json!({
        "id": format!("chatcmpl-tool-{id}"),
        "type": "function",
        "function": {"name": forced.name, "arguments": arguments(&forced.parameters, seed, key)},
    })]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["c", "f"]}},
                "required": ["city"],
            }}}),
        ]
    }

    #[test]
    fn a_forced_function_is_called_with_arguments_of_its_schema() {
        let tools = weather();
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let forced = forced(Some(&tools), Some(&named)).unwrap().unwrap();
        assert_eq!(forced.name, "get_weather");
        let args: Value = serde_json::from_str(&arguments(&forced.parameters, 0, 1)).unwrap();
        assert!(args["city"].is_string());
        assert_eq!(args["days"], 2);
        assert_eq!(args["unit"], "c");
        assert_eq!(
            super::forced(Some(&tools), Some(&json!("required"))).unwrap(),
            Some(forced)
        );
    }

    #[test]
    fn auto_none_and_mistakes() {
        let tools = weather();
        assert_eq!(forced(Some(&tools), Some(&json!("auto"))).unwrap(), None);
        assert_eq!(forced(Some(&tools), None).unwrap(), None);
        assert!(forced(None, Some(&json!("required"))).is_err());
        assert!(forced(
            Some(&tools),
            Some(&json!({"type": "function", "function": {"name": "nope"}}))
        )
        .is_err());
        assert!(forced(Some(&tools), Some(&json!("sometimes"))).is_err());
    }
}
