// An Express app that gates a (fake) image generation with Tollgate: each POST /generate
// reserves one `image.render` for the user, renders, then commits; a failed render releases
// the hold, and a user over quota gets 429 with their limits.
import express from "express";
import { QuotaExceededError, Tollgate, TollgateError, TollgateNetworkError } from "@tollgate/sdk";

const tollgate = new Tollgate({
  baseUrl: process.env.TOLLGATE_URL ?? "http://127.0.0.1:7070",
  secretKey: requiredEnv("TOLLGATE_KEY"),
});

const app = express();
app.use(express.json());

app.post("/generate", async (req, res) => {
  // In a real app the user comes from your session, never from the request body.
  const userId = String(req.header("x-user-id") ?? "");
  const prompt = String(req.body?.prompt ?? "");
  if (userId === "" || prompt === "") {
    res.status(400).json({ error: "send an x-user-id header and a JSON body {\"prompt\": \"…\"}" });
    return;
  }
  try {
    const { value: image, commit } = await tollgate.withReservation(
      { userId, event: "image.render", metadata: { model: "fake-diffusion" }, ttlSeconds: 30 },
      async () => fakeRender(prompt),
    );
    res.json({ image, limits: commit.limits });
  } catch (error) {
    if (error instanceof QuotaExceededError) {
      res.status(429).json({ error: "quota exceeded", reasons: error.answer.reasons, limits: error.answer.limits });
    } else if (error instanceof TollgateNetworkError) {
      res.status(503).json({ error: "metering is unreachable, try again shortly" });
    } else if (error instanceof TollgateError) {
      res.status(502).json({ error: `metering refused the request: ${error.code}` });
    } else {
      // The render failed: withReservation already released the hold.
      res.status(500).json({ error: error instanceof Error ? error.message : "render failed" });
    }
  }
});

app.get("/usage", async (req, res) => {
  const userId = String(req.header("x-user-id") ?? "");
  if (userId === "") {
    res.status(400).json({ error: "send an x-user-id header" });
    return;
  }
  try {
    res.json(await tollgate.usage(userId));
  } catch (error) {
    // Express 4 does not catch a rejected async handler: answer here.
    res.status(502).json({ error: error instanceof Error ? error.message : "metering failed" });
  }
});

/** Stands in for a slow, failure-prone image model; a prompt containing "fail" fails. */
async function fakeRender(prompt) {
  await new Promise((resolve) => setTimeout(resolve, 200));
  if (prompt.includes("fail")) throw new Error("the image provider timed out");
  return { url: `https://images.example/${encodeURIComponent(prompt)}.png`, prompt };
}

function requiredEnv(name) {
  const value = process.env[name];
  if (value === undefined || value === "") {
    console.error(`set ${name} (a tg_sk_test_… key from \`tollgate init --json\`)`);
    process.exit(1);
  }
  return value;
}

const port = Number(process.env.PORT ?? 3000);
app.listen(port, () => console.log(`example listening on http://127.0.0.1:${port}`));
