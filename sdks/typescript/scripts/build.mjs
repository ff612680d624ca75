// Builds dist/esm (ES modules) and dist/cjs (CommonJS) with tsc, and marks dist/cjs as
// CommonJS so Node reads it as such despite the package's "type": "module".
//
// It runs as the `prepare` script, also when another project installs this folder
// (`npm install ./sdks/typescript`): npm then links the folder without installing its
// devDependencies, so the pinned TypeScript is installed here first, from package-lock.json.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = resolveTsc() ?? installTypescriptAndResolve();
rmSync(join(root, "dist"), { recursive: true, force: true });
for (const project of ["tsconfig.json", "tsconfig.cjs.json"]) {
  try {
    execFileSync(process.execPath, [tsc, "-p", join(root, project)], { stdio: "inherit", cwd: root });
  } catch {
    console.error(`build failed: tsc -p ${project} reported errors (above)`);
    process.exit(1);
  }
}
mkdirSync(join(root, "dist", "cjs"), { recursive: true });
writeFileSync(join(root, "dist", "cjs", "package.json"), '{"type":"commonjs"}\n');

function resolveTsc() {
  try {
    return createRequire(join(root, "package.json")).resolve("typescript/bin/tsc");
  } catch {
    return undefined;
  }
}

function installTypescriptAndResolve() {
  console.error("building @tollgate/sdk: installing its pinned devDependencies (typescript) first");
  const npmCli = process.env.npm_execpath;
  const args = ["ci", "--ignore-scripts", "--no-audit", "--no-fund"];
  if (npmCli !== undefined && npmCli.endsWith(".js")) {
    execFileSync(process.execPath, [npmCli, ...args], { stdio: "inherit", cwd: root });
  } else {
    execFileSync(process.platform === "win32" ? "npm.cmd" : "npm", args, { stdio: "inherit", cwd: root, shell: process.platform === "win32" });
  }
  const tscPath = resolveTsc();
  if (tscPath === undefined) {
    console.error("build failed: typescript is still missing after `npm ci`");
    process.exit(1);
  }
  return tscPath;
}
