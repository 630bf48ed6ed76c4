//! Reading the answer of Prometheus' instant query API (`GET /api/v1/query`):
//!
//! ```json
//! {"status":"success","data":{"resultType":"vector","result":[
//!   {"metric":{"rollout":"fraud","variant":"canary"},"value":[1700000000.123,"42"]}]}}
//! ```
//!
//! A vector becomes its samples (labels sorted, `__name__` dropped); a scalar one
//! unlabelled sample. Values that are not finite numbers (`NaN`, `+Inf` of a division
//! by zero) are left out. `"status":"error"` becomes its `errorType: error` text.

use serde::Deserialize;
use serde_json::Value;

/// One sample of an answer: its labels (sorted by name) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Value,
}

#[derive(Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: std::collections::BTreeMap<String, String>,
    value: (Value, String),
}

fn number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Parses an instant query's answer into its samples.
pub fn parse(body: &str) -> Result<Vec<Sample>, String> {
    let a: Answer = serde_json::from_str(body)
        .map_err(|e| format!("the answer is not Prometheus API JSON: {e}"))?;
    if a.status != "success" {
        return Err(format!(
            "{}: {}",
            a.error_type.as_deref().unwrap_or("error"),
            a.error.as_deref().unwrap_or("no error text")
        ));
    }
    let data = a.data.ok_or("a successful answer without \"data\"")?;
    match data.result_type.as_str() {
        "vector" => {
            let v: Vec<VectorSample> = serde_json::from_value(data.result)
                .map_err(|e| format!("bad vector result: {e}"))?;
            Ok(v.into_iter()
                .filter_map(|s| {
                    let value = number(&s.value.1)?;
                    let labels = s
                        .metric
                        .into_iter()
                        .filter(|(k, _)| k != "__name__")
                        .collect();
                    Some(Sample { labels, value })
                })
                .collect())
        }
        "scalar" => {
            let (_, v): (Value, String) = serde_json::from_value(data.result)
                .map_err(|e| format!("bad scalar result: {e}"))?;
            Ok(number(&v)
                .map(|value| Sample {
                    labels: Vec::new(),
                    value,
                })
                .into_iter()
                .collect())
        }
        other => Err(format!(
            "result type {other:?}: an instant query must give a vector or a scalar"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_scalars_and_errors() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
          {"metric":{"variant":"canary","rollout":"fraud","__name__":"x"},"value":[1700000000.5,"42.5"]},
          {"metric":{"variant":"stable","rollout":"fraud"},"value":[1700000000.5,"NaN"]},
          {"metric":{},"value":[1700000000.5,"+Inf"]}]}}"#;
        let s = parse(body).unwrap();
        assert_eq!(
            s,
            vec![Sample {
                labels: vec![
                    ("rollout".to_string(), "fraud".to_string()),
                    ("variant".to_string(), "canary".to_string())
                ],
                value: 42.5
            }]
        );
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#;
        assert_eq!(parse(scalar).unwrap()[0].value, 3.0);
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse(empty).unwrap().is_empty());
        let err = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#;
        assert_eq!(parse(err).unwrap_err(), "bad_data: parse error at char 4");
        assert!(parse("<html>").is_err());
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse(matrix).unwrap_err().contains("matrix"));
    }
}
