// The Function App on Flex Consumption, running as the user-assigned identity. Every connection is
// identity-based; no app setting holds a key (see the README for using a key from Key Vault).
param name string
param planName string
param location string
param tags object
param identityName string
param storageAccountName string
param deploymentContainerName string
param serviceBusNamespaceName string
param applicationInsightsName string
param instanceMemoryMB int
param maximumInstanceCount int
param completionsContainerName string
param datasetsContainerName string
param reportsContainerName string
param completionIndexTableName string
param datasetJobsQueueName string
param purgeJobsQueueName string
param completionEventsQueueName string
param evalsContainerName string
param evalJobsQueueName string
param evalEmbeddingsDeployment string
param comparisonJudgeDeployment string
param evalDefaultTokenCap int
param fineTuningContainerName string
param aliasesContainerName string
param onlineEvalsQueueName string
param fineTuningJobsQueueName string
param fineTuningTrackSchedule string
param fineTuningDeploymentSku string
param fineTuningDeploymentCapacity int
param azureOpenAiEndpoint string
param azureOpenAiResourceId string
param azureOpenAiApiVersion string
param openAiBaseUrl string
param deploymentModels string
param priceTable string
param storeEnabled bool
param retentionDays int
param upstreamTimeoutSeconds int
param upstreamMaxConnections int
param storageQuotaBytes string
param storageQuotaMode string
param quotaReportSchedule string
param permissionReportSchedule string
param retentionSchedule string
param permissionProbeDeployment string
param datasetChunkSeconds int
param datasetMaxExampleTokens int
param apiKeys string
param ownerScoping bool
param maxBodyBytes int
param enableEntraAuth bool
param redaction string
param redactionEntities string
param redactionMetadata bool
param redactionKeySecretUri string
param redactionLanguageEndpoint string

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' existing = {
  name: serviceBusNamespaceName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy for Flex Consumption is chosen per region at creation; left to the operator.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { name: 'FC1', tier: 'FlexConsumption' }
  properties: { reserved: true }
}

// Settings the code reads (shared/platform/settings.py; tests/infra/test_bicep.py keeps the two in step).
// Empty optional URLs are left out, not set to '': the settings validate a present value as a URL.
var hostSettings = {
  // The HTTP streams extension (FastAPI request/response types, live server-sent events) needs it.
  PYTHON_ENABLE_INIT_INDEXING: '1'
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId
  ServiceBusConnection__fullyQualifiedNamespace: split(split(serviceBus.properties.serviceBusEndpoint, '//')[1], ':')[0]
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identity.properties.clientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'
}
var appSettings = {
  AZURE_CLIENT_ID: identity.properties.clientId
  DISTILLERY_CREDENTIAL: 'managed_identity'
  DISTILLERY_STORE_ENABLED: storeEnabled ? 'true' : 'false'
  DISTILLERY_TRUST_APP_SERVICE_AUTH: enableEntraAuth ? 'true' : 'false'
  DISTILLERY_API_KEYS: apiKeys
  DISTILLERY_OWNER_SCOPING: ownerScoping ? 'true' : 'false'
  DISTILLERY_MAX_BODY_BYTES: string(maxBodyBytes)
  DISTILLERY_DEPLOYMENT_MODELS: deploymentModels
  AZURE_OPENAI_API_VERSION: azureOpenAiApiVersion
  UPSTREAM_TIMEOUT_SECONDS: string(upstreamTimeoutSeconds)
  UPSTREAM_MAX_CONNECTIONS: string(upstreamMaxConnections)
  COMPLETIONS_CONTAINER: completionsContainerName
  DATASETS_CONTAINER: datasetsContainerName
  REPORTS_CONTAINER: reportsContainerName
  COMPLETION_INDEX_TABLE: completionIndexTableName
  DATASET_JOBS_QUEUE: datasetJobsQueueName
  // A dataset delivery checkpoints within the queue's 5-minute lock; failing jobs fail on the queue's
  // last delivery (maxDeliveryCount 5 in servicebus.bicep).
  DATASET_CHUNK_SECONDS: string(datasetChunkSeconds)
  DATASET_CHUNK_COMPLETIONS: '100000'
  DATASET_SLICE_COMPLETIONS: '10000'
  DATASET_READ_CONCURRENCY: '32'
  DATASET_MAX_EXAMPLE_TOKENS: string(datasetMaxExampleTokens)
  DATASET_MAX_DELIVERY_COUNT: '5'
  PURGE_JOBS_QUEUE: purgeJobsQueueName
  // Blob-created events of the completions container (events.bicep): the index is built from them.
  COMPLETION_EVENTS_QUEUE: completionEventsQueueName
  INDEX_SWEEP_SCHEDULE: '0 * * * * *'
  INDEX_SWEEP_GRACE_SECONDS: '60'
  EVALS_CONTAINER: evalsContainerName
  // Like datasets: a delivery checkpoints within the 5-minute lock; a failing run fails on the last of 5.
  EVAL_JOBS_QUEUE: evalJobsQueueName
  EVAL_CHUNK_SECONDS: '240'
  EVAL_MAX_DELIVERY_COUNT: '5'
  EVAL_CONCURRENCY: '8'
  EVAL_DEFAULT_TOKEN_CAP: string(evalDefaultTokenCap)
  EVAL_EMBEDDINGS_DEPLOYMENT: evalEmbeddingsDeployment
  // ROUGE/BLEU/METEOR are quadratic: longer texts are error results, slow ones are stopped.
  EVAL_MAX_COMPARED_CHARS: '20000'
  EVAL_METRIC_TIMEOUT_SECONDS: '30'
  MODEL_CALL_MAX_ATTEMPTS: '5'
  FINE_TUNING_CONTAINER: fineTuningContainerName
  FINE_TUNING_JOBS_QUEUE: fineTuningJobsQueueName
  // A preparation delivery ends 240 s after it began (what is left goes on in a new message): well
  // inside host.json's 10-minute maxAutoLockRenewalDuration, so its lock never lapses mid-upload.
  FINE_TUNING_DELIVERY_SECONDS: '240'
  FINE_TUNING_MAX_DELIVERY_COUNT: '5'
  FINE_TUNING_TRACK_SCHEDULE: fineTuningTrackSchedule
  // Deploying fine-tuned models goes through Resource Manager (this cloud's) on the account below.
  FINE_TUNING_DEPLOYMENT_SKU: fineTuningDeploymentSku
  FINE_TUNING_DEPLOYMENT_CAPACITY: string(fineTuningDeploymentCapacity)
  AZURE_RESOURCE_MANAGER_ENDPOINT: environment().resourceManager
  ALIASES_CONTAINER: aliasesContainerName
  ALIAS_CACHE_SECONDS: '10'
  ONLINE_EVALS_QUEUE: onlineEvalsQueueName
  RETENTION_DAYS: string(retentionDays)
  RETENTION_SCHEDULE: retentionSchedule
  STORAGE_QUOTA_BYTES: storageQuotaBytes
  STORAGE_QUOTA_MODE: storageQuotaMode
  // Memory and abuse limits (README "Limits"): 0 = no per-owner quota.
  OWNER_QUOTA_BYTES: '0'
  MAX_STORED_DOCUMENT_BYTES: '6291456'
  DOCUMENT_READ_BUDGET_BYTES: '16777216'
  QUOTA_TOP_VALUES: '10'
  PRICE_TABLE: priceTable
  QUOTA_REPORT_SCHEDULE: quotaReportSchedule
  PERMISSION_REPORT_SCHEDULE: permissionReportSchedule
  // Traces and metrics to the Application Insights above, signed in as the identity (Monitoring
  // Metrics Publisher, roles.bicep); message contents are never logged in Azure.
  TELEMETRY_EXPORTER: 'azure_monitor'
  LOG_CONTENT: 'false'
  // Redaction at capture (README "Redaction"); the pseudonymize key is a Key Vault reference below.
  REDACTION: redaction
  REDACTION_ENTITIES: redactionEntities
  REDACTION_METADATA: redactionMetadata ? 'true' : 'false'
  REDACTION_TIMEOUT_SECONDS: '10'
}
var upstreamSettings = union(
  empty(azureOpenAiEndpoint) ? {} : { AZURE_OPENAI_ENDPOINT: azureOpenAiEndpoint },
  empty(azureOpenAiResourceId) ? {} : { AZURE_OPENAI_RESOURCE_ID: azureOpenAiResourceId },
  empty(openAiBaseUrl) ? {} : { OPENAI_BASE_URL: openAiBaseUrl },
  empty(permissionProbeDeployment) ? {} : { PERMISSION_PROBE_DEPLOYMENT: permissionProbeDeployment },
  empty(comparisonJudgeDeployment) ? {} : { COMPARISON_JUDGE_DEPLOYMENT: comparisonJudgeDeployment },
  empty(redactionLanguageEndpoint) ? {} : { REDACTION_LANGUAGE_ENDPOINT: redactionLanguageEndpoint },
  empty(redactionKeySecretUri) ? {} : { REDACTION_KEY: '@Microsoft.KeyVault(SecretUri=${redactionKeySecretUri})' }
)

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17:Client certificates would stop the OpenAI SDKs, which authenticate with bearer tokens (Entra ID via enableEntraAuth).
  // checkov:skip=CKV_AZURE_222:Public network access is the product: callers reach the proxy over HTTPS; restrict with access restrictions or a private endpoint if needed.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero; always-ready instances are a cost the operator opts into (functionAppConfig.alwaysReady).
  // checkov:skip=CKV_AZURE_213:Flex Consumption manages instance health itself; GET /api/health answers external probes.
  // checkov:skip=CKV_AZURE_78:Flex Consumption has no FTP endpoint, and regions that enforce its rules refuse siteConfig.ftpsState (ARM error 51021).
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    // Key Vault references (the README's way to use a key) resolve with the app's identity.
    keyVaultReferenceIdentity: identity.id
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      // No ftpsState: Flex Consumption offers no FTP, and regions that enforce its rules refuse the property.
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: { name: 'python', version: '3.11' }
    }
  }
}

resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov reads this sites/config child as a site's 'web' config; those checks do not apply here:
  // checkov:skip=CKV_AZURE_63:App Service HTTP logs: Application Insights records every request instead.
  // checkov:skip=CKV_AZURE_65:Detailed IIS error pages: not a Linux Functions feature; exceptions go to Application Insights.
  // checkov:skip=CKV_AZURE_66:IIS failed request tracing: same as CKV_AZURE_65.
  // checkov:skip=CKV_AZURE_80:.NET Framework version: a Python app.
  // checkov:skip=CKV_AZURE_88:Azure Files content share: Flex Consumption deploys from the blob container instead.
  // checkov:skip=CKV_AZURE_222:Public network access is set on the site (see its skip).
  // checkov:skip=CKV_AZURE_13:Authentication is the optional authsettingsV2 resource in auth.bicep (enableEntraAuth).
  parent: site
  name: 'appsettings'
  properties: union(hostSettings, appSettings, upstreamSettings)
}

// Publishing with a user name and password stays off: azd and the CLI deploy with Entra ID. (No 'ftp'
// policy: Flex Consumption has no FTP publishing to turn off.)
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: { allow: false }
}

output name string = site.name
output uri string = 'https://${site.properties.defaultHostName}'
