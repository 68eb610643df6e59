// Validate glTF / GLB files with the Khronos glTF validator: prints one JSON report per file
// ({"path", "numErrors", "numWarnings", "messages": [...]}) as a JSON array on stdout.
// Usage: node validate.mjs FILE...   (tests/test_export_mesh.py runs it)
import fs from "node:fs";
import validator from "gltf-validator";

const out = [];
for (const path of process.argv.slice(2)) {
  const data = new Uint8Array(fs.readFileSync(path));
  const report = await validator.validateBytes(data, { maxIssues: 100 });
  out.push({ path, numErrors: report.issues.numErrors, numWarnings: report.issues.numWarnings,
             messages: report.issues.messages.map((m) => ({ code: m.code, severity: m.severity,
                                                              message: m.message })) });
}
console.log(JSON.stringify(out));
