/**
 * Nothing special is needed: `@tollgate/sdk` is a plain ESM/CJS package with no runtime
 * dependencies, so Next bundles it for the route handler like any other dependency.
 * @type {import('next').NextConfig}
 */
const nextConfig = {
  reactStrictMode: true,
};

export default nextConfig;
