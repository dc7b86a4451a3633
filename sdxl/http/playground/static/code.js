// "Copy as code": the request the form would send, as JavaScript and Python `replicate.run`
// and as curl, pointed at this server. Image inputs are read from a local file of that name.

const FILE_NAME = (name) => `${name}.png`;

function pyLiteral(value) {
  if (value === true) return "True";
  if (value === false) return "False";
  if (value === null) return "None";
  return JSON.stringify(value); // strings and numbers: JSON's forms are Python's too
}

function indented(lines, spaces) {
  return lines.map((line) => " ".repeat(spaces) + line).join("\n");
}

export function javascript({ base, model, version, input, files }) {
  const entries = Object.entries(input).map(([name, value]) =>
    files.has(name)
      ? `${name}: await readFile(${JSON.stringify(FILE_NAME(name))}),`
      : `${name}: ${JSON.stringify(value)},`,
  );
  const imports = files.size ? 'import { readFile } from "node:fs/promises";\n' : "";
  return `${imports}import Replicate from "replicate";

const replicate = new Replicate({
  auth: process.env.SDXL_API_KEY,
  baseUrl: ${JSON.stringify(`${base}/v1`)},
});
const output = await replicate.run(${JSON.stringify(`${model}:${version}`)}, {
  input: {
${indented(entries, 4)}
  },
});
for (const item of output) console.log(String(item));
`;
}

export function python({ base, model, version, input, files }) {
  const entries = Object.entries(input).map(([name, value]) =>
    files.has(name)
      ? `${JSON.stringify(name)}: open(${JSON.stringify(FILE_NAME(name))}, "rb"),`
      : `${JSON.stringify(name)}: ${pyLiteral(value)},`,
  );
  return `import os

import replicate

client = replicate.Client(
    api_token=os.environ["SDXL_API_KEY"],
    base_url=${JSON.stringify(base)},
)
output = client.run(
    ${JSON.stringify(`${model}:${version}`)},
    input={
${indented(entries, 8)}
    },
)
for item in output:
    print(item)
`;
}

function shellQuoted(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

export function curl({ base, version, input, files }) {
  // The JSON body in single quotes; an image's data URI comes from base64 of its file.
  const marks = {};
  const body = { version, input: { ...input } };
  for (const name of files) {
    marks[name] = `@@${name}@@`;
    body.input[name] = marks[name];
  }
  let quoted = shellQuoted(JSON.stringify(body, null, 2));
  for (const [name, mark] of Object.entries(marks)) {
    const file = FILE_NAME(name);
    quoted = quoted.replace(mark, `data:image/png;base64,'"$(base64 -w0 ${file})"'`);
  }
  return `curl -s -X POST ${shellQuoted(`${base}/v1/predictions`)} \\
  -H "Authorization: Bearer $SDXL_API_KEY" \\
  -H "Content-Type: application/json" \\
  -H "Prefer: wait" \\
  -d ${quoted}
`;
}

export const LANGUAGES = { javascript, python, curl };
