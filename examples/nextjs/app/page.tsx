export default function Home() {
  return (
    <main style={{ fontFamily: "system-ui, sans-serif", maxWidth: 640, margin: "2rem auto" }}>
      <h1>Tollgate × Next.js</h1>
      <p>
        <code>POST /api/generate</code> with an <code>x-user-id</code> header and{" "}
        <code>{'{"prompt": "…"}'}</code>: 200 with a fake image while the user has quota, 429 with the
        limits once it is spent, 502 (and the hold released) when the render fails.
      </p>
    </main>
  );
}
