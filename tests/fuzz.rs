//! Property-based fuzzing of everything that parses files a user hands us: the data readers
//! (TSV, CSV, JSONL, GLUE layouts), `config.json`, tokenizer files and sweep configs. Each
//! property feeds random (and randomly mutated valid) input and requires an `Ok` or an `Err`,
//! never a panic. `PROPTEST_CASES` sets the number of cases per property (256 in CI; see
//! docs/reliability.md for the long run).
mod common;

use std::path::Path;

use clsnorm::data::{glue_task, read_dataset, Format, TaskSpec};
use clsnorm::encoder::BertConfig;
use clsnorm::sweep::SweepConfig;
use clsnorm::tokenize::TextTokenizer;
use proptest::prelude::*;

use common::{write_file as write, SKIP, STRICT};

/// Bytes that look like tabular data: fragments of valid rows, separators, quotes, newlines,
/// CR, BOMs, invalid UTF-8 and arbitrary characters, in random order.
fn tabular_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\t".to_vec()),
        Just(b",".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just("\u{feff}".as_bytes().to_vec()),
        Just(b"\xff\xfe".to_vec()),
        Just(b"{\"text\": \"a\", \"label\": 1}\n".to_vec()),
        Just(b"sentence\tlabel\n".to_vec()),
        Just(b"index\tsentence1\tsentence2\tlabel\n".to_vec()),
        Just(b"entailment".to_vec()),
        Just(b"0".to_vec()),
        Just(b"1".to_vec()),
        Just(b"3.5".to_vec()),
        Just(b"nan".to_vec()),
        "[ -~]{0,12}".prop_map(String::into_bytes),
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn custom_specs(file: &Path) -> Vec<TaskSpec> {
    let f = file.to_string_lossy();
    let mut specs = Vec::new();
    for format in [Format::Tsv, Format::Csv, Format::Jsonl] {
        for (header, text, pair, label) in [
            (true, "text", None, "label"),
            (true, "sentence1", Some("sentence2"), "label"),
            (false, "0", None, "1"),
            (false, "1", Some("2"), "0"),
        ] {
            for regression in [false, true] {
                if let Ok(s) = TaskSpec::custom(
                    "fuzz", format, header, text, pair, label, regression, &f, None,
                ) {
                    specs.push(s);
                }
            }
        }
    }
    specs
}

proptest! {
    #[test]
    fn data_readers_never_panic(body in tabular_bytes()) {
        let d = tempfile::tempdir().unwrap();
        let file = write(d.path(), "f.txt", &body);
        for spec in custom_specs(&file) {
            for opts in [STRICT, SKIP] {
                let _ = read_dataset(&file, &spec, opts);
            }
        }
        for task in ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"] {
            let spec = glue_task(task).unwrap();
            for opts in [STRICT, SKIP] {
                let _ = read_dataset(&file, &spec, opts);
            }
        }
    }

    #[test]
    fn model_config_parsing_never_panics(
        keys in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "hidden_size", "num_attention_heads", "num_hidden_layers",
                    "intermediate_size", "vocab_size", "max_position_embeddings",
                    "type_vocab_size", "hidden_act", "layer_norm_eps",
                    "hidden_dropout_prob", "position_embedding_type", "model_type",
                ]),
                prop_oneof![
                    any::<i64>().prop_map(|v| v.to_string()),
                    any::<f64>().prop_map(|v| format!("{v:e}")),
                    "\"[a-z_]{0,10}\"",
                    Just("null".to_string()),
                    Just("[]".to_string()),
                    Just("1e400".to_string()),
                ],
            ),
            0..8,
        ),
        junk in "[ -~]{0,16}",
    ) {
        let d = tempfile::tempdir().unwrap();
        let body: Vec<String> = keys.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        for text in [format!("{{{}}}", body.join(", ")), format!("{{{}{junk}", body.join(","))] {
            let p = write(d.path(), "config.json", text.as_bytes());
            if let Ok(cfg) = BertConfig::from_file(&p) {
                // What loads has passed validation: the shapes it implies are usable.
                prop_assert!(cfg.hidden_size > 0 && cfg.num_attention_heads > 0);
                prop_assert_eq!(cfg.hidden_size % cfg.num_attention_heads, 0);
            }
        }
    }

    #[test]
    fn tokenizer_loading_and_encoding_never_panic(
        vocab in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "##s", "the", ""]).prop_map(String::from),
                any::<String>(),
            ],
            0..30,
        ),
        lower in any::<bool>(),
        config_junk in prop::option::of("[ -~]{0,20}"),
        text in any::<String>(),
        max_len in 0usize..40,
    ) {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "vocab.txt", vocab.join("\n").as_bytes());
        let config = match &config_junk {
            Some(j) => j.clone(),
            None => format!("{{\"do_lower_case\": {lower}}}"),
        };
        write(d.path(), "tokenizer_config.json", config.as_bytes());
        if let Ok(tok) = TextTokenizer::load(d.path(), max_len) {
            if let Ok(e) = tok.encode(&text, Some(&text)) {
                prop_assert!(e.input_ids.len() <= max_len.max(3));
            }
        }
    }

    #[test]
    fn sweep_config_parsing_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                Just("name = \"s\"".to_string()),
                Just("tasks = [\"RTE\", \"MRPC\"]".to_string()),
                Just("seeds = [1, 2]".to_string()),
                Just("[[norm]]".to_string()),
                Just("name = \"isobn\"".to_string()),
                Just("[args]".to_string()),
                Just("epochs = [1, 2]".to_string()),
                Just("lr = -1".to_string()),
                "[a-z-]{1,8} = [0-9\"\\[\\], ]{0,10}",
                "[ -~]{0,20}",
            ],
            0..12,
        ),
    ) {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "sweep.toml", lines.join("\n").as_bytes());
        if let Ok(cfg) = SweepConfig::from_file(&p) {
            let _ = cfg.expand(&p);
        }
    }
}

/// A valid checkpoint of a tiny model (made once), which the checkpoint property mutates.
fn pristine_checkpoint() -> &'static Path {
    use clsnorm::classifier::{Classifier, ClsSource, HeadConfig};
    use clsnorm::normalize::Normalizers;
    use clsnorm::train::checkpoint::{self, CheckpointMeta};
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        common::tiny_model_dir(&model, 1);
        let enc = clsnorm::encoder::Encoder::load(&model, tch::Device::Cpu, false).unwrap();
        let task = glue_task("sst2").unwrap();
        let head = HeadConfig {
            labels: task.labels.clone(),
            cls_source: ClsSource::Pooler,
            norm: Normalizers::builtin().defaults("batchnorm").unwrap(),
            dropout: 0.1,
            bias_init: Default::default(),
            classifier_init: Default::default(),
        };
        let model_head = Classifier::new(enc, head.clone(), 1, &Normalizers::builtin()).unwrap();
        let meta = CheckpointMeta {
            clsnorm_version: "0.1.0".into(),
            task,
            head,
            max_len: 16,
            state: Default::default(),
        };
        let tok = clsnorm::tokenize::TokenizerFiles::read(&model).unwrap();
        checkpoint::save(&d.path().join("ck"), &model_head, &meta, None, &tok).unwrap();
        d
    })
    .path()
}

/// Puts `name`'s current sha256 into the manifest of `dir` (a mutation that a hash alone
/// would catch is not interesting).
fn rehash(dir: &Path, name: &str) {
    let path = dir.join("manifest.json");
    let Ok(mut m) = serde_json::from_slice::<std::collections::BTreeMap<String, String>>(
        &std::fs::read(&path).unwrap(),
    ) else {
        return;
    };
    if let Ok(h) = clsnorm::fsread::sha256_file(&dir.join(name), clsnorm::fsread::Links::Follow) {
        m.insert(name.into(), h);
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        any::<i64>().prop_map(|v| json!(v)),
        any::<u64>().prop_map(|v| json!(v)),
        any::<f64>().prop_map(|v| json!(v)),
        "[a-z]{0,8}".prop_map(|s| json!(s)),
        prop::collection::vec("[0-9a-z]{0,3}", 0..5).prop_map(|v| json!({ "classes": v })),
        Just(json!("regression")),
        Just(json!(null)),
        Just(json!({ "name": "isobn", "momentum": 2.0 })),
    ]
}

/// One pickle opcode (with its argument) of those the reader knows, or a few that it refuses.
fn pickle_op() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"(".to_vec()),
        Just(b"N".to_vec()),
        Just(b")".to_vec()),
        Just(b"]".to_vec()),
        Just(b"}".to_vec()),
        Just(b"t".to_vec()),
        Just(b"\x85".to_vec()),
        Just(b"\x86".to_vec()),
        Just(b"\x87".to_vec()),
        Just(b"a".to_vec()),
        Just(b"e".to_vec()),
        Just(b"s".to_vec()),
        Just(b"u".to_vec()),
        Just(b"R".to_vec()),
        Just(b"b".to_vec()),
        Just(b"Q".to_vec()),
        Just(b"\x94".to_vec()),
        Just(b"\x93".to_vec()),
        any::<u8>().prop_map(|i| vec![b'q', i % 4]),
        any::<u8>().prop_map(|i| vec![b'h', i % 4]),
        any::<u32>().prop_map(|v| [&[b'J'][..], &v.to_le_bytes()].concat()),
        any::<u8>().prop_map(|v| vec![b'K', v]),
        "[a-z_.]{0,12}".prop_map(|s| [&[0x8c, s.len() as u8][..], s.as_bytes()].concat()),
        Just(b"ctorch._utils\n_rebuild_tensor_v2\n".to_vec()),
        Just(b"ccollections\nOrderedDict\n".to_vec()),
        Just(b"ctorch\nFloatStorage\n".to_vec()),
        Just(b"cos\nsystem\n".to_vec()),
        Just(b"\x8c\x07storage".to_vec()),
        Just(b"\x8c\x010".to_vec()),
        any::<u8>().prop_map(|b| vec![b]),
    ]
}

proptest! {
    #[test]
    fn checkpoint_loading_never_panics(
        meta_edits in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "/max_len", "/head/labels", "/task/labels", "/head/dropout", "/head/norm",
                    "/head/cls_source", "/state/epoch", "/state/best_epoch", "/task/primary",
                ]),
                json_value(),
            ),
            0..4,
        ),
        manifest_edits in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "../secret", "/etc/passwd", "", ".", "config.json", "vocab.txt",
                    "head.safetensors", "tokenizer.json", "a/b", "manifest.json",
                ]),
                prop_oneof![Just("0".repeat(64)), "[0-9a-f]{64}", "[ -~]{0,10}"],
            ),
            0..3,
        ),
        head_shapes in prop::option::of((0i64..5, 0i64..40, 0i64..5, any::<bool>())),
        flip in prop::option::of((any::<prop::sample::Index>(), any::<u8>(), any::<bool>())),
    ) {
        use clsnorm::encoder::weights;
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("ck");
        std::fs::create_dir(&ck).unwrap();
        for e in std::fs::read_dir(pristine_checkpoint().join("ck")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
        }
        let meta_path = ck.join("clsnorm.json");
        let mut meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
        for (ptr, v) in &meta_edits {
            if let Some(slot) = meta.pointer_mut(ptr) {
                *slot = v.clone();
            }
        }
        std::fs::write(&meta_path, meta.to_string()).unwrap();
        rehash(&ck, "clsnorm.json");
        if let Some((rows, cols, bias, nan)) = head_shapes {
            let fill = if nan { f32::NAN } else { 0.5 };
            let w = tch::Tensor::full([rows, cols], f64::from(fill), (tch::Kind::Float, tch::Device::Cpu));
            let b = tch::Tensor::zeros([bias], (tch::Kind::Float, tch::Device::Cpu));
            weights::write_safetensors(
                &ck.join("head.safetensors"),
                &[("classifier.weight".into(), w), ("classifier.bias".into(), b)],
            )
            .unwrap();
            rehash(&ck, "head.safetensors");
        }
        if let Some((at, byte, truncate)) = flip {
            let p = ck.join("model.safetensors");
            let mut bytes = std::fs::read(&p).unwrap();
            let i = at.index(bytes.len());
            if truncate {
                bytes.truncate(i);
            } else {
                bytes[i] = byte;
            }
            std::fs::write(&p, bytes).unwrap();
            rehash(&ck, "model.safetensors");
        }
        let mpath = ck.join("manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        for (name, hash) in &manifest_edits {
            manifest[*name] = serde_json::json!(hash);
        }
        std::fs::write(&mpath, manifest.to_string()).unwrap();
        if let Ok((model, meta)) = clsnorm::train::checkpoint::load_model(&ck, tch::Device::Cpu, &clsnorm::Registry::builtin()) {
            // What loads is usable: its tokenizer fits it, and it predicts without a panic.
            let tok = TextTokenizer::load(&ck, meta.max_len).unwrap();
            model.encoder.limits().check_tokenizer(&tok, false).unwrap();
            let e = tok.encode("the cat was good", None).unwrap();
            let _ = clsnorm::eval::logits(&model, &[e], 4, tok.pad_id());
        }
    }

    #[test]
    fn pickles_never_panic_and_stay_within_budget(
        ops in prop::collection::vec(pickle_op(), 0..300),
        laughs in 0usize..40,
    ) {
        use std::io::Write;
        let mut pkl = b"\x80\x02".to_vec();
        for op in &ops {
            pkl.extend_from_slice(op);
        }
        // Doubling a memoized value: the budget must stop it, whatever came before.
        for _ in 0..laughs {
            pkl.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        pkl.push(b'.');
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("pytorch_model.bin");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(&pkl).unwrap();
        z.start_file("archive/data/0", opts).unwrap();
        z.write_all(&[0u8; 64]).unwrap();
        z.finish().unwrap();
        let t0 = std::time::Instant::now();
        let _ = clsnorm::encoder::pickle::read_torch_zip(&path);
        prop_assert!(t0.elapsed().as_secs() < 10, "took {:?}", t0.elapsed());
    }
}
