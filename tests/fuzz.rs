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

/// One normalizer of a `tokenizer.json`, of every kind clsnorm bounds.
fn normalizer_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    let leaf = prop_oneof![
        prop::sample::select(vec![
            "NFC",
            "NFD",
            "NFKC",
            "NFKD",
            "Lowercase",
            "Strip",
            "StripAccents",
            "Nmt"
        ])
        .prop_map(|t| json!({"type": t})),
        Just(
            json!({"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                    "strip_accents": true, "lowercase": true})
        ),
        ("[ab ]{0,3}", "[ab▁]{0,40}").prop_map(|(s, c)| json!({"type": "Replace",
            "pattern": {"String": s}, "content": c})),
        (
            prop::sample::select(vec!["", "a*", "(a+)+$", "\\b", " {2,}", "(?=a)", "a|b"]),
            "[ab]{0,20}"
        )
            .prop_map(|(r, c)| json!({"type": "Replace", "pattern": {"Regex": r}, "content": c})),
        "[▁a]{0,6}".prop_map(|p| json!({"type": "Prepend", "prepend": p})),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop::collection::vec(inner, 0..3)
            .prop_map(|v| serde_json::json!({"type": "Sequence", "normalizers": v}))
    })
}

/// One pre-tokenizer of a `tokenizer.json`.
fn pre_tokenizer_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!({"type": "BertPreTokenizer"})),
        Just(json!({"type": "Whitespace"})),
        Just(
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true})
        ),
        Just(
            json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                    "split": true})
        ),
        prop::sample::select(vec!["(a+)+$", "a*", " ", "\\s+"]).prop_map(|r| json!({
            "type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false})),
    ]
}

/// A small valid parquet file (snappy, the Hub's GLUE metadata), written once.
fn pristine_parquet() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.parquet");
        let words = |w: &str| (0..20).map(|i| format!("{w} {i}")).collect::<Vec<_>>();
        common::write_parquet(
            &f,
            &[
                common::Col::Text("sentence1", words("the cat")),
                common::Col::Text("sentence2", words("a dog")),
                common::Col::Int("label", (0..20).map(|i| i % 3 - 1).collect()),
                common::Col::Float("score", (0..20).map(|i| i as f32 / 4.0).collect()),
            ],
            Some(&["entailment", "not_entailment"]),
        );
        std::fs::read(f).unwrap()
    })
}

proptest! {
    /// A parquet file with flipped bytes or cut short: `Ok` or `Err` from the reader (whose
    /// panics on corrupt input are caught), never a panic.
    #[test]
    fn parquet_files_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = pristine_parquet().to_vec();
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        let d = tempfile::tempdir().unwrap();
        let file = write(d.path(), "f.parquet", &bytes);
        let f = file.to_string_lossy();
        let mut specs: Vec<TaskSpec> = Vec::new();
        for (text, pair, label, regression) in [
            ("sentence1", Some("sentence2"), "label", false),
            ("sentence1", None, "score", true),
        ] {
            specs.push(
                TaskSpec::custom("fuzz", Format::Parquet, true, text, pair, label, regression, &f, None)
                    .unwrap(),
            );
        }
        let mut rte = glue_task("rte").unwrap();
        rte.format = Format::Parquet;
        specs.push(rte);
        for spec in specs {
            for opts in [STRICT, SKIP] {
                let _ = read_dataset(&file, &spec, opts);
            }
        }
    }

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

    /// Random normalizer and pre-tokenizer chains in a `tokenizer.json` (long replacements,
    /// empty and catastrophic regular expressions, prepends, nested sequences) on random text:
    /// loading and encoding end in `Ok` or `Err`, and no text grows beyond the bound clsnorm
    /// computes for the file (which decides what it measures and refuses).
    #[test]
    fn tokenizer_json_chains_never_panic_or_outgrow_their_bound(
        normalizers in prop::collection::vec(normalizer_json(), 0..4),
        pre in prop::collection::vec(pre_tokenizer_json(), 0..3),
        text in prop_oneof![
            "[ab ]{0,80}".prop_map(String::from),
            any::<String>(),
            "[a-z\u{fdfa}\u{0130}\u{4e00}\u{1f82} ]{0,40}".prop_map(String::from),
        ],
    ) {
        use tokenizers::{NormalizedString, Normalizer, OffsetReferential, OffsetType,
                         PreTokenizedString, PreTokenizer};
        let json = common::tiny_tokenizer_json(|t| {
            t["normalizer"] = serde_json::json!({"type": "Sequence", "normalizers": normalizers});
            t["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": pre});
        });
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "tokenizer.json", json.as_bytes());
        if let Ok(tok) = TextTokenizer::load(d.path(), 16) {
            let _ = tok.encode(&text, Some("b a"));
        }
        // The bound holds for what the pipeline really does.
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let Ok(growth) = clsnorm::tokenize::Growth::of_json(&value) else { return Ok(()) };
        let Ok(raw) = tokenizers::Tokenizer::from_bytes(json.as_bytes()) else { return Ok(()) };
        let n = text.len().max(1) as f64;
        if growth.factor() * n > 1e7 {
            return Ok(()); // clsnorm measures such texts; running the chain raw could take GBs
        }
        let mut normalized = NormalizedString::from(text.as_str());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            raw.get_normalizer().map(|nz| nz.normalize(&mut normalized))
        }));
        let Ok(None | Some(Ok(()))) = caught else { return Ok(()) };
        let grown = normalized.get().len() as f64;
        prop_assert!(grown <= growth.normalizer * n, "{grown} > {} x {n}", growth.normalizer);
        let mut pre_split = PreTokenizedString::from(normalized);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            raw.get_pre_tokenizer().map(|p| p.pre_tokenize(&mut pre_split))
        }));
        let Ok(None | Some(Ok(()))) = caught else { return Ok(()) };
        let split: usize = pre_split
            .get_splits(OffsetReferential::Normalized, OffsetType::Byte)
            .iter()
            .map(|(s, _, _)| s.len())
            .sum();
        prop_assert!(
            split as f64 <= growth.factor() * n,
            "{split} > {} x {n}", growth.factor()
        );
    }

    /// Pairs are encoded one side at a time and truncated by `post_process` (to avoid the
    /// cubic overflow merging of `Tokenizer::encode`): ids and token types must equal what
    /// `Tokenizer::encode` gives, for every post-processor kind, at every length and limit.
    #[test]
    fn pairs_encode_exactly_as_tokenizers_does(
        a in prop::collection::vec(prop::sample::select(common::TINY_VOCAB[5..].to_vec()), 0..40),
        b in prop::collection::vec(prop::sample::select(common::TINY_VOCAB[5..].to_vec()), 0..40),
        max_len in 3usize..30,
        processor in 0usize..3,
    ) {
        let json = common::tiny_tokenizer_json(|t| match processor {
            0 => {}
            1 => t["post_processor"] = serde_json::json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}},
                         {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                                   "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}}),
            _ => t["post_processor"] = serde_json::Value::Null,
        });
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "tokenizer.json", json.as_bytes());
        let tok = TextTokenizer::load(d.path(), max_len).unwrap();
        let mut raw = tokenizers::Tokenizer::from_bytes(json.as_bytes()).unwrap();
        raw.with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .unwrap();
        let (a, b) = (a.join(" "), b.join(" "));
        let want = raw.encode((a.as_str(), b.as_str()), true).unwrap();
        let got = tok.encode(&a, Some(&b)).unwrap();
        let want_ids: Vec<i64> = want.get_ids().iter().map(|&i| i as i64).collect();
        let want_types: Vec<i64> = want.get_type_ids().iter().map(|&i| i as i64).collect();
        prop_assert_eq!(got.input_ids, want_ids);
        prop_assert_eq!(got.token_type_ids, want_types);
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
