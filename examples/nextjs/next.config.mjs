/** @type {import('next').NextConfig} */
const nextConfig = {
  // The SDK is a local package (file:../../sdks/typescript): let Next bundle it like any other.
  reactStrictMode: true,
};

export default nextConfig;
