//! Layer-wise learning-rate decay (`--layer-decay D`), as ELECTRA's and DeBERTa's fine-tuning
//! recipes group parameters: depth 0 for the embeddings, `i + 1` for encoder layer `i`, `L + 1`
//! for what sits on top (pooler, ModernBERT's head, the normalizer, the classifier); a
//! parameter at depth `d` trains at `lr * D^(L + 1 - d)`, so the head has the full rate, the
//! top layer `lr * D`, the embeddings `lr * D^(L + 1)`.

/// The encoder layer parameter `name` belongs to, by the families' names (`encoder.layer.3.`,
/// `transformer.layer.3.` of DistilBERT, `layers.3.` of ModernBERT).
fn layer_index(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts
        .windows(2)
        .find(|w| w[0] == "layer" || w[0] == "layers")
        .and_then(|w| w[1].parse().ok())
}

/// The depth of parameter `name` in an encoder of `layers` layers (see the module's doc).
pub fn depth(name: &str, layers: usize) -> usize {
    if let Some(i) = layer_index(name) {
        return (i + 1).min(layers);
    }
    let first = name.split('.').next().unwrap_or("");
    match first {
        // Token, position and type embeddings, ELECTRA's projection of them.
        "embeddings" | "embeddings_project" => 0,
        // DeBERTa's relative-position table and its norm, which every layer reads: with the
        // embeddings, as inputs to the first layer.
        "encoder" => 0,
        // ModernBERT's norm after the last layer.
        "final_norm" => layers,
        _ => layers + 1,
    }
}

/// The learning-rate factor of every parameter (`names`), for decay `decay`; the number of
/// layers is read from the names.
pub fn scales<'a>(names: impl Iterator<Item = &'a str> + Clone, decay: f64) -> Vec<f64> {
    let layers = names
        .clone()
        .filter_map(layer_index)
        .max()
        .map_or(0, |m| m + 1);
    names
        .map(|n| decay.powi((layers + 1 - depth(n, layers)) as i32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_is_grouped_by_depth() {
        let names = [
            ("embeddings.word_embeddings.weight", 0),
            ("embeddings_project.weight", 0),
            ("encoder.rel_embeddings.weight", 0),
            ("encoder.layer.0.attention.self.query.weight", 1),
            ("transformer.layer.1.ffn.lin1.weight", 2),
            ("layers.2.attn.Wqkv.weight", 3),
            ("final_norm.weight", 3),
            ("pooler.dense.weight", 4),
            ("head.dense.weight", 4),
            ("normalizer.weight", 4),
            ("classifier.bias", 4),
        ];
        for (n, d) in names {
            assert_eq!(depth(n, 3), d, "{n}");
        }
        let s = scales(names.iter().map(|(n, _)| *n), 0.5);
        // Three layers (0, 1, 2): embeddings 0.5^4, layer 0 0.5^3, the head 1.
        assert_eq!(s[0], 0.0625);
        assert_eq!(s[3], 0.125);
        assert_eq!(s[5], 0.5);
        assert_eq!(s[10], 1.0);
        assert!(scales(names.iter().map(|(n, _)| *n), 1.0)
            .iter()
            .all(|&v| v == 1.0));
    }
}
