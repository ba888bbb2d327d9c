# Lapse sidecar image: built from source, run as a non-root user with production dependencies only.
#   docker build -t lapse .
#   docker run --rm -e LAPSE_UPSTREAM=… -e LAPSE_ISSUER=… -e LAPSE_AUDIENCE=… -e LAPSE_JWKS_URL=… -p 8080:8080 lapse
# The current Node LTS; the code also runs on Node 20 (CI runs there).
ARG NODE_VERSION=26

FROM node:${NODE_VERSION}-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY bin ./bin
# `prepare` compiles src/ to dist/.
RUN npm ci --no-audit --no-fund

FROM node:${NODE_VERSION}-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY bin ./bin
USER node
# 8080: clients. 9901: admin API, health and metrics (LAPSE_ADMIN_LISTEN).
EXPOSE 8080 9901
ENTRYPOINT ["node", "bin/lapse.js"]
CMD ["proxy"]
