// The report viewer bundle: three.js and Spark as one classic (non-module) script, so the page
// works from file:// (Chromium refuses ES modules there) and from object storage, with no CDN.
// tools/report-viewer/setup.sh bundles it into dist/viewer.js; `sctd3d report` copies that file
// into each report folder (viewer/viewer.js). The page's own code (stages/report/static/report.js)
// uses only window.SCTD3DViewer.
import * as THREE from "three";
import { SplatMesh, SparkRenderer } from "@sparkjsdev/spark";

window.SCTD3DViewer = { THREE, SplatMesh, SparkRenderer, versions: { three: THREE.REVISION, spark: "2.2.0" } };
