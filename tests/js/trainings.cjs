// Replicate's JavaScript client (1.4.0) against `python -m sdxl api`: a destination model, a
// training whose archive is a URL (this client sends inputs as they are), the training read
// back until it runs, then cancelled. Prints each answer as one JSON line for the Python test.
const Replicate = require("replicate");

async function main() {
  const [owner, name, version, archiveUrl] = process.argv.slice(2);
  const replicate = new Replicate({
    auth: process.env.REPLICATE_API_TOKEN,
    baseUrl: process.env.REPLICATE_BASE_URL,
  });
  const print = (what, value) => console.log(JSON.stringify({ what, value }));
  print("model", await replicate.models.create(owner, name, {
    visibility: "private",
    hardware: "gpu",
  }));
  let training = await replicate.trainings.create("stability-ai", "sdxl", version, {
    destination: `${owner}/${name}`,
    input: {
      input_images: archiveUrl,
      max_train_steps: 5000,
      resolution: 256,
      train_batch_size: 2,
      lora_rank: 4,
    },
  });
  print("created", training);
  while (!/^step \d+\//m.test(training.logs || "")) {  // it runs: its first step is logged
    await new Promise((resolve) => setTimeout(resolve, 100));
    training = await replicate.trainings.get(training.id);
  }
  print("running", training);
  print("canceled", await replicate.trainings.cancel(training.id));
  print("after", await replicate.trainings.get(training.id));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
