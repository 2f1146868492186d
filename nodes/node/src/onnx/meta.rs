//! The model's name and version as exit records give them: from the topology, else from the
//! ONNX file's own fields (`metadata_props`, `graph.name`, `model_version`).

use std::path::Path;

use crate::onnx::model::open_session;

/// The model a tier runs, as its exit records name it: `model_name`/`model_version` from the
/// topology, else from the ONNX file's metadata ([`ModelMeta::identify`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelId {
    pub name: String,
    pub version: Option<String>,
}

/// The identity fields of an ONNX file (`ModelProto`): what exit records name a model by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelMeta {
    /// `graph.name`.
    pub graph_name: Option<String>,
    /// `model_version` as ONNX Runtime reports it: `i64::MAX` (its `kNoVersion`) when the
    /// file has none; 0 is what exporters write when the user did not set it.
    pub model_version: Option<i64>,
    /// `metadata_props["name"]` and `metadata_props["version"]`.
    pub prop_name: Option<String>,
    pub prop_version: Option<String>,
}

impl ModelMeta {
    /// The model's name and version. Name: the topology's `model_name`, else `metadata_props`
    /// "name", else the graph's name, else the file name. Version: `model_version` from the
    /// topology, else `metadata_props` "version", else the ONNX `model_version` when set and
    /// non-zero, else none. Empty strings count as absent (exporters write `""` for unset names).
    pub fn identify(&self, file: &Path, name: Option<&str>, version: Option<&str>) -> ModelId {
        let given = |s: Option<&str>| s.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
        let name = given(name)
            .or_else(|| given(self.prop_name.as_deref()))
            .or_else(|| given(self.graph_name.as_deref()))
            .unwrap_or_else(|| file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
        let version = given(version)
            .or_else(|| given(self.prop_version.as_deref()))
            .or_else(|| self.model_version.filter(|&v| v != 0 && v != i64::MAX).map(|v| v.to_string()));
        ModelId { name, version }
    }
}

/// Reads a model's identity fields (opens a session; no inference).
pub fn read_meta(path: &Path) -> Result<ModelMeta, String> {
    let session = open_session(path)?;
    let meta = session.metadata().map_err(|e| e.to_string())?;
    Ok(ModelMeta {
        graph_name: meta.name(),
        model_version: meta.version(),
        prop_name: meta.custom("name"),
        prop_version: meta.custom("version"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(graph: &str, version: i64, name: Option<&str>, prop_version: Option<&str>) -> ModelMeta {
        ModelMeta {
            graph_name: Some(graph.to_string()),
            model_version: Some(version),
            prop_name: name.map(str::to_string),
            prop_version: prop_version.map(str::to_string),
        }
    }

    #[test]
    fn topology_then_props_then_graph_then_file() {
        let file = Path::new("/m/edge.onnx");
        let id = |n: &str, v: Option<&str>| ModelId { name: n.to_string(), version: v.map(str::to_string) };
        let cases = [
            (meta("g", 0, None, None), None, None, id("g", None)),
            (meta("", 0, None, None), None, None, id("edge.onnx", None)),
            (ModelMeta::default(), None, None, id("edge.onnx", None)),
            (meta("g", 7, None, None), None, None, id("g", Some("7"))),
            (meta("g", i64::MAX, None, None), None, None, id("g", None)),
            (meta("g", 7, Some("p"), Some("1.2")), None, None, id("p", Some("1.2"))),
            (meta("g", 7, Some(" "), Some("")), None, None, id("g", Some("7"))),
            (meta("g", 7, Some("p"), Some("1.2")), Some("t"), Some("v9"), id("t", Some("v9"))),
            (meta("g", 0, None, None), Some(" t "), None, id("t", None)),
        ];
        for (m, name, version, want) in cases {
            assert_eq!(m.identify(file, name, version), want, "{m:?} {name:?} {version:?}");
        }
    }
}
