// PM2: the seed app in cluster mode, two instances sharing one port.
module.exports = {
  apps: [
    {
      name: 'floodgate-bench-seed',
      script: __dirname + '/app.js',
      exec_mode: 'cluster',
      instances: Number(process.env.SEED_INSTANCES || 2),
      env: {
        PORT: process.env.PORT,
        REDIS_URL: process.env.REDIS_URL,
      },
    },
  ],
};
