// Job queues: Entra ID only, at-least-once delivery with duplicate detection, poison messages
// dead-lettered after five tries.
param name string
param location string
param tags object
param queueNames array

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: name
  location: location
  tags: tags
  // Standard, not Basic: duplicate detection needs it. Premium only for private networking.
  sku: { name: 'Standard', tier: 'Standard' }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queues 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = [
  for queueName in queueNames: {
    parent: namespace
    name: queueName
    properties: {
      // Matches the host's maxAutoLockRenewalDuration budget: a job chunk runs within one lock.
      lockDuration: 'PT5M'
      maxDeliveryCount: 5
      requiresDuplicateDetection: true
      duplicateDetectionHistoryTimeWindow: 'PT10M'
      deadLetteringOnMessageExpiration: true
      defaultMessageTimeToLive: 'P14D'
      maxSizeInMegabytes: 1024
    }
  }
]

output name string = namespace.name
output queueNames array = queueNames
// serviceBusEndpoint reads https://{name}.servicebus.windows.net:443/ (suffix varies by cloud).
output fullyQualifiedNamespace string = split(split(namespace.properties.serviceBusEndpoint, '//')[1], ':')[0]
