// Packs the package as `npm pack` would publish it, installs the tarball into a scratch app
// (offline: react and its types are linked from this package's node_modules) and type-checks
// examples/consumer.tsx there with strict tsc: the tarball alone must give a working typed package.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const app = mkdtempSync(join(tmpdir(), "kpistream-consumer-"));
try {
  const packed = JSON.parse(
    execFileSync("npm", ["pack", "--json", "--pack-destination", app], { cwd: pkg, encoding: "utf8" }),
  );
  const { filename, files } = packed[0];
  const paths = files.map((f) => f.path);
  for (const need of ["package.json", "dist/index.js", "dist/index.d.ts", "dist/react.js", "dist/react.d.ts"]) {
    if (!paths.includes(need)) throw new Error(`the tarball lacks ${need}`);
  }
  if (paths.some((p) => p.startsWith("test/") || p.startsWith("node_modules/"))) throw new Error("the tarball carries tests or node_modules");
  const modules = join(app, "node_modules");
  const target = join(modules, "kpistream");
  mkdirSync(target, { recursive: true });
  execFileSync("tar", ["-xzf", join(app, filename), "-C", target, "--strip-components=1"]);
  mkdirSync(join(modules, "@types"), { recursive: true });
  for (const dep of ["react", "@types/react"]) symlinkSync(join(pkg, "node_modules", dep), join(modules, dep), "dir");
  copyFileSync(join(pkg, "examples", "consumer.tsx"), join(app, "consumer.tsx"));
  copyFileSync(join(pkg, "examples", "tsconfig.json"), join(app, "tsconfig.json"));
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
  execFileSync(process.execPath, [join(pkg, "node_modules", "typescript", "bin", "tsc"), "-p", app], { stdio: "inherit" });
  console.log(`${filename}: ${files.length} files; a strict TypeScript app type-checks against the installed tarball`);
} finally {
  rmSync(app, { recursive: true, force: true });
}
