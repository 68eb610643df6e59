// What every viewer test page shares: the query (asset URL, c2w: 16 numbers row-major in the
// OpenGL axes of transforms.json, fovy in degrees, size in px), errors reported in the title, a
// WebGL renderer on a black square canvas and a three.js camera at frame 0's pose.
import * as THREE from "three";

export const q = new URLSearchParams(location.search);

export const fail = (e) => {
  document.title = "error: " + ((e && (e.message || e.reason && (e.reason.message || e.reason))) || e);
};
window.addEventListener("error", fail);
window.addEventListener("unhandledrejection", fail);

export function frame0() {
  const size = Number(q.get("size"));
  const renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(1);
  renderer.setSize(size, size);
  renderer.setClearColor(0x000000, 1);
  document.body.appendChild(renderer.domElement);
  const camera = new THREE.PerspectiveCamera(Number(q.get("fovy")), 1, 0.01, 100);
  const m = new THREE.Matrix4().fromArray(q.get("c2w").split(",").map(Number)).transpose();
  m.decompose(camera.position, camera.quaternion, camera.scale);
  camera.updateMatrixWorld(true);
  return { renderer, camera };
}
