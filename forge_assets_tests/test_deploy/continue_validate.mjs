// Validate Continue config.yaml files with Continue's own package, @continuedev/config-yaml.
//
//   node continue_validate.mjs <npm prefix holding @continuedev/config-yaml> <config.yaml>...
//
// For each file: parseConfigYaml (YAML + configYamlSchema, the zod schema Continue loads config.yaml with),
// then validateConfigYaml (the schema again plus Continue's own checks, whose non-fatal findings are warnings).
// zod drops keys it does not know without a word, so a misspelled key would pass; this script also lists every
// key of the raw YAML that is missing from the parsed config ("dropped").
// Prints one JSON object: {package: {name, version}, results: [{file, ok, errors, warnings, dropped}]}.
// Exit status: 0 when every file is ok (no error, no warning, nothing dropped), 1 otherwise, 2 on bad usage.

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, ...files] = process.argv.slice(2);
if (!prefix || files.length === 0) {
  console.error("usage: node continue_validate.mjs <npm prefix> <config.yaml>...");
  process.exit(2);
}

// Resolve through the package's own "exports" map, as an importer in that prefix would.
const requireFromPrefix = createRequire(join(prefix, "package.json"));
const entry = requireFromPrefix.resolve("@continuedev/config-yaml");
const configYaml = await import(pathToFileURL(entry).href);

// The package's own package.json (its exports map does not expose it): walk up from the entry point.
let pkgDir = dirname(entry);
let pkg;
for (;;) {
  try {
    pkg = JSON.parse(readFileSync(join(pkgDir, "package.json"), "utf8"));
    if (pkg.name === "@continuedev/config-yaml") break;
  } catch {}
  const up = dirname(pkgDir);
  if (up === pkgDir) throw new Error(`no package.json of @continuedev/config-yaml above ${entry}`);
  pkgDir = up;
}

// The same YAML parser the package uses (its dependency), for the raw document.
const yamlEntry = createRequire(entry).resolve("yaml");
const YAML = (await import(pathToFileURL(yamlEntry).href)).default;

for (const name of ["parseConfigYaml", "validateConfigYaml", "configYamlSchema"]) {
  if (!(name in configYaml)) throw new Error(`@continuedev/config-yaml ${pkg.version} does not export ${name}`);
}

function dropped(raw, parsed, path, out) {
  if (Array.isArray(raw)) {
    raw.forEach((item, i) => dropped(item, Array.isArray(parsed) ? parsed[i] : undefined, `${path}[${i}]`, out));
  } else if (raw !== null && typeof raw === "object") {
    for (const key of Object.keys(raw)) {
      const here = path ? `${path}.${key}` : key;
      if (parsed === null || typeof parsed !== "object" || !(key in parsed)) out.push(here);
      else dropped(raw[key], parsed[key], here, out);
    }
  }
  return out;
}

const results = [];
for (const file of files) {
  const text = readFileSync(file, "utf8");
  const result = { file, ok: false, errors: [], warnings: [], dropped: [] };
  results.push(result);
  let parsed;
  try {
    parsed = configYaml.parseConfigYaml(text);
  } catch (e) {
    result.errors.push(String(e && e.message ? e.message : e));
    continue;
  }
  for (const issue of configYaml.validateConfigYaml(parsed)) {
    (issue.fatal ? result.errors : result.warnings).push(issue.message);
  }
  // zod keeps only the keys its schema knows: whatever the raw document has and `parsed` lacks was dropped.
  result.dropped = dropped(YAML.parse(text), parsed, "", []);
  result.ok = result.errors.length === 0 && result.warnings.length === 0 && result.dropped.length === 0;
}

console.log(JSON.stringify({ package: { name: pkg.name, version: pkg.version }, results }, null, 2));
process.exit(results.every((r) => r.ok) ? 0 : 1);
