// Niantic's SPZ reader (its C++ library built to WebAssembly: npm @adobe/spz, the codec
// splat-transform ships) with its default unpack options (no coordinate conversion: the file's
// own RUB axes). Usage: node spz_reference.mjs SPZ_MODULE_JS IN.spz OUT.json
import { readFileSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [moduleJs, input, output] = process.argv.slice(2);
const { default: createSpzModule } = await import(pathToFileURL(moduleJs).href);
const spz = await createSpzModule();
const cloud = spz.loadSpzFromBuffer(new Uint8Array(readFileSync(input)),
                                    { to: spz.CoordinateSystem.UNSPECIFIED });
writeFileSync(output, JSON.stringify({ numPoints: cloud.numPoints, shDegree: cloud.shDegree,
                                       positions: Array.from(cloud.positions) }));
